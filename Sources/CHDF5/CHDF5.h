#ifndef QTOOL_CHDF5_H
#define QTOOL_CHDF5_H
#include <hdf5.h>

// Swift cannot import HDF5's function-like and global-variable macros; these
// wrappers give them typed names (hid_t, unsigned) that Swift can call.
static inline hid_t qtool_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t qtool_H5S_ALL(void) { return H5S_ALL; }
static inline unsigned qtool_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned qtool_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline hid_t qtool_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t qtool_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t qtool_H5T_NATIVE_INT8(void) { return H5T_NATIVE_INT8; }
static inline hid_t qtool_H5T_NATIVE_INT16(void) { return H5T_NATIVE_INT16; }
static inline hid_t qtool_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t qtool_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t qtool_H5T_NATIVE_UINT8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t qtool_H5T_NATIVE_UINT16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t qtool_H5T_NATIVE_UINT32(void) { return H5T_NATIVE_UINT32; }
static inline hid_t qtool_H5T_NATIVE_UINT64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t qtool_H5T_C_S1(void) { return H5T_C_S1; }
static inline hid_t qtool_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }

#endif
