/* golden.c — reads the golden archives written by tests/oracle/moegold.py:
 * "MOEGOLD1", then records: u32 name length, name, 4-byte dtype code, u32 ndim, i64 shape[ndim], payload. */
#include <stdlib.h>

#include "test.h"

static int golden_itemsize(const char *dtype) {
    if (!strcmp(dtype, "u8") || !strcmp(dtype, "str")) return 1;
    if (!strcmp(dtype, "u16")) return 2;
    if (!strcmp(dtype, "u32") || !strcmp(dtype, "f32")) return 4;
    if (!strcmp(dtype, "u64") || !strcmp(dtype, "i64")) return 8;
    return 0;
}

int golden_load(golden *g, const char *data_dir, const char *file) {
    memset(g, 0, sizeof *g);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", data_dir, file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "  cannot open %s (run from the repository root, or pass --data)\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc((size_t)size);
    if (!g->buf || fread(g->buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        fprintf(stderr, "  cannot read %s\n", path);
        golden_free(g);
        return -1;
    }
    fclose(f);
    if (size < 8 || memcmp(g->buf, "MOEGOLD1", 8) != 0) goto corrupt;
    size_t pos = 8;
    int cap = 0;
    while (pos < (size_t)size) {
        if (g->count == cap) {
            cap = cap ? 2 * cap : 64;
            golden_record *recs = realloc(g->recs, (size_t)cap * sizeof *recs);
            if (!recs) goto corrupt;
            g->recs = recs;
        }
        golden_record *r = &g->recs[g->count];
        memset(r, 0, sizeof *r);
        uint32_t len, ndim;
        if (pos + 4 > (size_t)size) goto corrupt;
        memcpy(&len, g->buf + pos, 4);
        pos += 4;
        if (len >= sizeof r->name || pos + len + 8 > (size_t)size) goto corrupt;
        memcpy(r->name, g->buf + pos, len);
        pos += len;
        memcpy(r->dtype, g->buf + pos, 4);
        pos += 4;
        memcpy(&ndim, g->buf + pos, 4);
        pos += 4;
        if (ndim > 8 || pos + 8 * ndim > (size_t)size) goto corrupt;
        r->ndim = (int)ndim;
        r->numel = 1;
        for (uint32_t d = 0; d < ndim; d++) {
            memcpy(&r->shape[d], g->buf + pos, 8);
            pos += 8;
            r->numel *= r->shape[d];
        }
        int item = golden_itemsize(r->dtype);
        if (!item) goto corrupt;
        r->bytes = (size_t)r->numel * (size_t)item;
        if (pos + r->bytes > (size_t)size) goto corrupt;
        r->data = g->buf + pos;
        pos += r->bytes;
        g->count++;
    }
    /* the archive packs the payloads unaligned; the tests read them as their element types, so each gets a
     * 16-byte aligned copy */
    size_t total = 0;
    for (int i = 0; i < g->count; i++) total += (g->recs[i].bytes + 15) / 16 * 16;
    g->payload = aligned_alloc(16, total ? total : 16);
    if (!g->payload) {
        fprintf(stderr, "  no memory for %s\n", path);
        golden_free(g);
        return -1;
    }
    size_t at = 0;
    for (int i = 0; i < g->count; i++) {
        memcpy(g->payload + at, g->recs[i].data, g->recs[i].bytes);
        g->recs[i].data = g->payload + at;
        at += (g->recs[i].bytes + 15) / 16 * 16;
    }
    return 0;
corrupt:
    fprintf(stderr, "  %s is not a valid golden archive\n", path);
    golden_free(g);
    return -1;
}

void golden_free(golden *g) {
    free(g->buf);
    free(g->payload);
    free(g->recs);
    memset(g, 0, sizeof *g);
}

const golden_record *golden_find(const golden *g, const char *name) {
    for (int i = 0; i < g->count; i++)
        if (!strcmp(g->recs[i].name, name)) return &g->recs[i];
    return NULL;
}

const golden_record *golden_get(const golden *g, const char *name) {
    const golden_record *r = golden_find(g, name);
    if (!r) fprintf(stderr, "  golden record %s is missing\n", name);
    return r;
}

/* The names listed in record `list` (one per line), as a NULL-terminated array to free() together. */
char **golden_case_names(const golden *g, const char *list) {
    const golden_record *r = golden_get(g, list);
    if (!r) return NULL;
    char *text = calloc(1, r->bytes + 1);
    memcpy(text, r->data, r->bytes);
    size_t n = 1;
    for (size_t i = 0; i < r->bytes; i++) n += text[i] == '\n';
    char **names = calloc(n + 1, sizeof *names), *save = NULL;
    size_t k = 0;
    for (char *s = strtok_r(text, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) names[k++] = strdup(s);
    free(text);
    return names;
}

void golden_free_names(char **names) {
    for (size_t i = 0; names && names[i]; i++) free(names[i]);
    free(names);
}

const golden_record *golden_case(const golden *g, const char *name, const char *suffix) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", name, suffix);
    return golden_get(g, key);
}

const char *golden_cfg(const golden *g, const char *name, char *buf, size_t cap) {
    const golden_record *r = golden_case(g, name, "cfg");
    if (!r) return NULL;
    size_t n = r->bytes < cap - 1 ? r->bytes : cap - 1;
    memcpy(buf, r->data, n);
    buf[n] = 0;
    return buf;
}

/* int64 record -> int32 array (malloc) */
int32_t *golden_to_i32(const golden_record *r) {
    int32_t *o = malloc(sizeof(int32_t) * (size_t)(r->numel + 1));
    for (int64_t i = 0; i < r->numel; i++) o[i] = (int32_t)((const int64_t *)r->data)[i];
    return o;
}

int golden_cfg_int(const char *cfg, const char *key, long long *out) {
    const char *p = strstr(cfg, key);
    return p ? sscanf(p + strlen(key), "%lld", out) == 1 : 0;
}

int golden_cfg_word(const char *cfg, const char *key, char *out, size_t cap) {
    const char *p = strstr(cfg, key);
    if (!p) return 0;
    p += strlen(key);
    size_t n = 0;
    while (p[n] && p[n] != ' ' && n + 1 < cap) n++;
    memcpy(out, p, n);
    out[n] = 0;
    return 1;
}

float golden_cfg_f32(const char *cfg, const char *key) {
    char w[32] = "3f800000";
    golden_cfg_word(cfg, key, w, sizeof w);
    return test_f32_from_bits((uint32_t)strtoul(w, NULL, 16));
}
