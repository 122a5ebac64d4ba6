#ifndef QTOOL_CZSTD_H
#define QTOOL_CZSTD_H
#include <zstd.h>
#endif
