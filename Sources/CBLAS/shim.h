#include <cblas.h>
// Thread control is OpenBLAS-specific (not in the CBLAS standard).
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
// The kernel family OpenBLAS's DYNAMIC_ARCH build picked for this CPU ("Haswell", "SkylakeX",
// "Zen", or a generic fallback such as "Prescott" on CPUs it does not know).
char *openblas_get_corename(void);
char *openblas_get_config(void);
