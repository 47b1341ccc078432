# moe.c — builds libmoe (static and shared), the `moe` CLI and the test runner.
# CUDA kernels are compiled when nvcc is found (sm_90a + sm_80, plus compute_80 PTX for newer GPUs);
# without nvcc the library is CPU-only. `make CUDA=0` forces a CPU-only build.
# Expert parallelism: NCCL comes with the CUDA toolkit; MPI (Debian's OpenMPI) is used when mpicc is found
# (`make MPI=0` builds without it: the single-process transports remain).

PREFIX  ?= /usr/local
BUILD   ?= build
CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA    ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_GENCODE ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
                -gencode=arch=compute_80,code=compute_80

WARN    = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unknown-pragmas
CFLAGS  ?= -O2 -g
CFLAGS_ALL = -std=c11 -D_POSIX_C_SOURCE=200809L $(WARN) $(CFLAGS) -fPIC -fopenmp -fvisibility=hidden -Iinclude -Isrc
# -fmad=false: no automatic a*b+c contraction, so kernels compute exactly what the CPU reference does (explicit
# fmaf/__fmaf_rn calls still fuse)
NVFLAGS ?= -O3 -lineinfo -DNDEBUG -fmad=false
# the architectures this build has code for, as the library reports them ("sm_90a sm_80 compute_80")
CUDA_ARCHS := $(strip $(shell echo '$(CUDA_GENCODE)' | grep -o ',code=[a-z_0-9]*' | sed 's/,code=//' | tr '\n' ' '))
NVFLAGS_ALL = -std=c++17 $(NVFLAGS) $(CUDA_GENCODE) -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Werror \
              -Werror all-warnings -Iinclude -Isrc -DMOE_WITH_CUDA -DMOE_CUDA_ARCHS='"$(CUDA_ARCHS)"'
LDLIBS  = -fopenmp -lm
TOOL_LIBS = -l:libjansson.a
GIT_COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)

LIB_SRC  = $(wildcard src/*/*.c)
CUDA_SRC = $(if $(filter 1,$(CUDA)),$(wildcard src/cuda/*.cu src/cuda/*/*.cu))
TOOL_SRC = $(wildcard tools/*.c)
TEST_SRC = $(wildcard tests/*.c)

MPICC   ?= $(shell command -v mpicc 2>/dev/null)
MPI     ?= $(if $(MPICC),1,0)

ifeq ($(CUDA),1)
CFLAGS_ALL += -DMOE_WITH_CUDA
LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lnccl -lcudart_static -ldl -lrt -lpthread -lstdc++
endif
ifeq ($(MPI),1)
LDLIBS += $(shell $(MPICC) --showme:link)
$(BUILD)/src/ep/comm_mpi.o: CFLAGS_ALL += -DMOE_WITH_MPI $(shell $(MPICC) --showme:compile)
endif
LDLIBS += -lpthread

LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o) $(CUDA_SRC:%.cu=$(BUILD)/%.o)
TOOL_OBJ = $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS     = $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

.PHONY: all lib test sanitize run install uninstall clean FORCE
all: $(BUILD)/libmoe.a $(BUILD)/libmoe.so $(BUILD)/moe $(BUILD)/moe_tests
lib: $(BUILD)/libmoe.a $(BUILD)/libmoe.so

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

# comm_mpi.o is built with or without MPI: it follows the MPI setting through a stamp
$(BUILD)/mpi.txt: FORCE
	@mkdir -p $(BUILD)
	@echo '$(MPI)' | cmp -s - $@ || echo '$(MPI)' > $@
$(BUILD)/src/ep/comm_mpi.o: $(BUILD)/mpi.txt

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/libmoe.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libmoe.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libmoe.so.0 -o $@ $^ $(LDLIBS)

# The commit the CLI reports; the stamp changes (and the tools rebuild) only when the commit does.
$(BUILD)/commit.txt: FORCE
	@mkdir -p $(BUILD)
	@echo '$(GIT_COMMIT)' | cmp -s - $@ || echo '$(GIT_COMMIT)' > $@

$(BUILD)/tools/%.o: tools/%.c $(BUILD)/commit.txt
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DMOE_GIT_COMMIT='"$(GIT_COMMIT)"' -MMD -MP -c $< -o $@

$(BUILD)/moe: $(TOOL_OBJ) $(BUILD)/libmoe.a
	$(CC) -o $@ $(TOOL_OBJ) $(BUILD)/libmoe.a $(TOOL_LIBS) $(LDLIBS)

$(BUILD)/moe_tests: $(TEST_OBJ) $(BUILD)/libmoe.a
	$(CC) -o $@ $(TEST_OBJ) $(BUILD)/libmoe.a $(LDLIBS)

# The README's test command. On a machine with a GPU the same runner also runs the GPU tests. With MPI, the
# expert-parallel test runs again under mpirun on 1, 2, 3 and 4 processes (one seed for all ranks).
MPIRUN_FLAGS ?= --oversubscribe
test: $(BUILD)/moe_tests $(BUILD)/moe
	./$(BUILD)/moe_tests --data tests/data
	bash tests/cli_test.sh $(BUILD)/moe
ifeq ($(MPI),1)
	@for n in 1 2 3 4; do \
	  echo "mpirun -np $$n $(BUILD)/moe_tests ep_mpi"; \
	  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MOE_TEST_SEED=$$(date +%s) \
	    mpirun $(MPIRUN_FLAGS) -np $$n ./$(BUILD)/moe_tests --data tests/data ep_mpi || exit 1; \
	done
endif

# The CPU-only library, tests and command line under AddressSanitizer (with leak checks) and UBSan, any finding
# fatal, in build-san; then the API fuzz test at more rounds (.ci/run runs this). An allocation too large for any
# machine returns NULL there, as malloc does, instead of stopping the run (the tests ask for such sizes on purpose).
SAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_ENV = ASAN_OPTIONS=allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1
sanitize:
	$(MAKE) CUDA=0 MPI=0 BUILD=build-san CFLAGS="$(SAN_FLAGS)" LDLIBS="-fopenmp -lm -lpthread $(SAN_FLAGS)" \
	  build-san/moe_tests build-san/moe
	$(SAN_ENV) ./build-san/moe_tests --data tests/data
	$(SAN_ENV) bash tests/cli_test.sh build-san/moe
	$(SAN_ENV) MOE_FUZZ_ITERS=10000 ./build-san/moe_tests --data tests/data api_fuzz

# The README's main job on its built-in default.
run: $(BUILD)/moe
	./$(BUILD)/moe bench layer

$(BUILD)/moe.pc: Makefile
	@mkdir -p $(BUILD)
	printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: moe\nDescription: Mixture-of-Experts inference library\nVersion: 0.1.0\nLibs: -L$${libdir} -lmoe\nLibs.private: %s\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(LDLIBS)' > $@

install: all $(BUILD)/moe.pc
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/moe.h $(DESTDIR)$(PREFIX)/include/moe.h
	install -m 644 $(BUILD)/libmoe.a $(DESTDIR)$(PREFIX)/lib/libmoe.a
	install -m 755 $(BUILD)/libmoe.so $(DESTDIR)$(PREFIX)/lib/libmoe.so.0
	ln -sf libmoe.so.0 $(DESTDIR)$(PREFIX)/lib/libmoe.so
	install -m 644 $(BUILD)/moe.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/moe.pc
	install -m 755 $(BUILD)/moe $(DESTDIR)$(PREFIX)/bin/moe

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/moe.h $(DESTDIR)$(PREFIX)/lib/libmoe.a $(DESTDIR)$(PREFIX)/lib/libmoe.so \
	      $(DESTDIR)$(PREFIX)/lib/libmoe.so.0 $(DESTDIR)$(PREFIX)/lib/pkgconfig/moe.pc $(DESTDIR)$(PREFIX)/bin/moe

clean:
	rm -rf $(BUILD)

-include $(DEPS)
