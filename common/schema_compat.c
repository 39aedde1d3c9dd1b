/* filled in by its module's work */
#include "schema_compat.h"
