// oneDNN's C API (Debian's libdnnl-dev: /usr/include/oneapi/dnnl, libdnnl.so; it ships no
// pkg-config file, so the header is found on the default include path and `link "dnnl"` names
// the library). Macros that Swift does not import are re-exported as constants and functions.
#include <oneapi/dnnl/dnnl.h>
#include <dlfcn.h>

enum {
    MTL_DNNL_ARG_SRC = DNNL_ARG_SRC,
    MTL_DNNL_ARG_DST = DNNL_ARG_DST,
    MTL_DNNL_ARG_FROM = DNNL_ARG_FROM,
    MTL_DNNL_ARG_TO = DNNL_ARG_TO,
    MTL_DNNL_ARG_WEIGHTS = DNNL_ARG_WEIGHTS,
    MTL_DNNL_ARG_BIAS = DNNL_ARG_BIAS,
    MTL_DNNL_ARG_DIFF_SRC = DNNL_ARG_DIFF_SRC,
    MTL_DNNL_ARG_DIFF_DST = DNNL_ARG_DIFF_DST,
    MTL_DNNL_ARG_DIFF_WEIGHTS = DNNL_ARG_DIFF_WEIGHTS,
    MTL_DNNL_ARG_DIFF_BIAS = DNNL_ARG_DIFF_BIAS,
};

static inline void *mtl_dnnl_memory_allocate(void) { return DNNL_MEMORY_ALLOCATE; }
static inline void *mtl_dnnl_memory_none(void) { return DNNL_MEMORY_NONE; }

// Debian's oneDNN runs on GNU OpenMP (libgomp, loaded with libdnnl). Its thread count is set
// through omp_set_num_threads, looked up at run time so that nothing links libgomp by name.
static inline int mtl_omp_set_num_threads(int n) {
    void (*f)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (!f) return 0;
    f(n);
    return 1;
}
static inline int mtl_omp_get_max_threads(void) {
    int (*f)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    return f ? f() : -1;
}
