/* filled in by its module's work */
#include "pbjson.h"
