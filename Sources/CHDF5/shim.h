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
