#ifndef QTOOL_CHDF5_H
#define QTOOL_CHDF5_H
#include <hdf5.h>
#include <string.h>

// Swift cannot import HDF5's function-like and global-variable macros; these
// wrappers give the ones qtool uses typed names (hid_t, unsigned) that Swift can call.
static inline hid_t qtool_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline unsigned qtool_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned qtool_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline hid_t qtool_H5T_C_S1(void) { return H5T_C_S1; }
static inline hid_t qtool_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }
static inline hid_t qtool_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }

static inline hid_t qtool_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t qtool_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t qtool_H5T_STD_I8LE(void) { return H5T_STD_I8LE; }
static inline hid_t qtool_H5T_STD_I16LE(void) { return H5T_STD_I16LE; }
static inline hid_t qtool_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t qtool_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t qtool_H5T_STD_U8LE(void) { return H5T_STD_U8LE; }
static inline hid_t qtool_H5T_STD_U16LE(void) { return H5T_STD_U16LE; }
static inline hid_t qtool_H5T_STD_U32LE(void) { return H5T_STD_U32LE; }
static inline hid_t qtool_H5T_STD_U64LE(void) { return H5T_STD_U64LE; }
static inline size_t qtool_H5T_VARIABLE(void) { return H5T_VARIABLE; }
static inline haddr_t qtool_HADDR_UNDEF(void) { return HADDR_UNDEF; }

// libhdf5 prints its error stack to stderr by default; qtool reports errors itself.
static inline void qtool_H5_silence(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static herr_t qtool_H5_walk(unsigned n, const H5E_error2_t *error, void *data) {
    char *buffer = (char *)data;
    // Walking upward, the first entry is the innermost, most specific one.
    if (n == 0 && error->desc) {
        strncpy(buffer, error->desc, 255);
        buffer[255] = 0;
    }
    return 0;
}

/// The innermost message of the current error stack, in a 256-byte buffer, then clears it.
static inline void qtool_H5_last_error(char *buffer) {
    buffer[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, qtool_H5_walk, buffer);
    H5Eclear2(H5E_DEFAULT);
}

#endif
