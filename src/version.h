/* version: keel's version, one definition for every binary and reply. */
#ifndef KEEL_VERSION_H
#define KEEL_VERSION_H

#define KEEL_VERSION "0.1.0"

#endif
