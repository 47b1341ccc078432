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
    return 0;
corrupt:
    fprintf(stderr, "  %s is not a valid golden archive\n", path);
    golden_free(g);
    return -1;
}

void golden_free(golden *g) {
    free(g->buf);
    free(g->recs);
    memset(g, 0, sizeof *g);
}

const golden_record *golden_get(const golden *g, const char *name) {
    for (int i = 0; i < g->count; i++)
        if (!strcmp(g->recs[i].name, name)) return &g->recs[i];
    fprintf(stderr, "  golden record %s is missing\n", name);
    return NULL;
}
