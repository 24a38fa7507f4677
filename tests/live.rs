//! Live test of the matrix-3-machine bundle: see tests/live/README.md.
