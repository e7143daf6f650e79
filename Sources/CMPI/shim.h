// MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, ...) are macros with casts or addresses of globals
// (Open MPI) or integer constants with casts (MPICH), which Swift cannot import; these inline
// functions expose them. The library is linked through pkg-config (ompi-c or mpich).
#include <mpi.h>

static inline MPI_Comm mtl_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm mtl_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype mtl_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype mtl_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype mtl_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype mtl_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype mtl_byte(void) { return MPI_BYTE; }
static inline MPI_Op mtl_op_sum(void) { return MPI_SUM; }
static inline MPI_Op mtl_op_max(void) { return MPI_MAX; }
static inline MPI_Op mtl_op_min(void) { return MPI_MIN; }
static inline void *mtl_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request mtl_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *mtl_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Info mtl_info_null(void) { return MPI_INFO_NULL; }
static inline int mtl_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Errhandler mtl_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int mtl_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int mtl_success(void) { return MPI_SUCCESS; }
