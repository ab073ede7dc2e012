/*-------------------------------------------------------------------------
 *
 * jsonbuild.h
 *		JSON text to jsonb, checking for interrupts (jsonbuild.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_JSONBUILD_H
#define AE_JSONBUILD_H

#include "utils/jsonb.h"

/*
 * The value jsonb_in gives for text (NUL-terminated, in the server
 * encoding, len bytes); raises jsonb_in's errors.
 */
extern Jsonb *ae_parse_jsonb(char *text, size_t len);

#endif
