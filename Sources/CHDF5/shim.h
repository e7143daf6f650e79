// HDF5's property-list and type ids (H5P_DEFAULT, H5T_NATIVE_FLOAT, H5F_ACC_RDONLY ...)
// are macros that call H5open() or cast; Swift cannot import them, so they are wrapped here.
#include <hdf5.h>

static inline hid_t mtl_h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t mtl_h5s_all(void) { return H5S_ALL; }
static inline unsigned mtl_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned mtl_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline unsigned mtl_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline hid_t mtl_h5p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t mtl_h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t mtl_h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline hid_t mtl_h5p_group_create(void) { return H5P_GROUP_CREATE; }
static inline hid_t mtl_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t mtl_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t mtl_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t mtl_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t mtl_native_int16(void) { return H5T_NATIVE_INT16; }
static inline hid_t mtl_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t mtl_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t mtl_native_uint32(void) { return H5T_NATIVE_UINT32; }
static inline hid_t mtl_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t mtl_native_uint64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t mtl_c_s1(void) { return H5T_C_S1; }
static inline hid_t mtl_std_i16le(void) { return H5T_STD_I16LE; }
static inline hid_t mtl_std_u8le(void) { return H5T_STD_U8LE; }
static inline hid_t mtl_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t mtl_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t mtl_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t mtl_ieee_f64le(void) { return H5T_IEEE_F64LE; }
static inline size_t mtl_h5t_variable(void) { return H5T_VARIABLE; }

/* Silence HDF5's automatic error stack printing: errors are reported by the caller. */
static inline void mtl_h5_silence(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* The OS reason behind the HDF5 call that just failed: HDF5's file drivers record the errno text
   ("errno = 28, error message = 'No space left on device'") in the error stack, which is otherwise
   only printed. Copies it into buf and returns 1, or returns 0 when the stack names none. */
#include <string.h>
typedef struct { char *buf; size_t size; } mtl_h5_reason_ctx;
static inline herr_t mtl_h5_reason_walk(unsigned n, const H5E_error2_t *err, void *data) {
    mtl_h5_reason_ctx *ctx = (mtl_h5_reason_ctx *)data;
    (void)n;
    if (err->desc) {
        const char *m = strstr(err->desc, "error message = '");
        if (m) {
            m += strlen("error message = '");
            size_t len = strcspn(m, "'");
            if (len >= ctx->size) len = ctx->size - 1;
            memcpy(ctx->buf, m, len);
            ctx->buf[len] = 0;
        }
    }
    return 0;
}
static inline int mtl_h5_os_reason(char *buf, size_t size) {
    if (size == 0) return 0;
    buf[0] = 0;
    mtl_h5_reason_ctx ctx = { buf, size };
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, mtl_h5_reason_walk, &ctx);
    return buf[0] != 0;
}
/* File creation with the 1.10 format (checksummed
   superblock and object headers), so that a flipped byte in a checkpoint fails the read. */
/* The root group keeps its links in its (checksummed) object header instead of an unchecksummed
   fractal heap, however many datasets it holds. */
static inline hid_t mtl_h5f_compact_links_fcpl(void) {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_link_phase_change(fcpl, 65535, 65534);
    return fcpl;
}
static inline hid_t mtl_h5f_latest_format_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
    return fapl;
}
