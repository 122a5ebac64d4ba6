#ifndef QTOOL_COPENBLAS_H
#define QTOOL_COPENBLAS_H
#include <cblas.h>
#endif
