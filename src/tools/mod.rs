//! What the command line's `bench`, `summary`, `check-device` and `--device` run on: public
//! for the binary, the tests and the fuzz bodies, not part of the library's supported surface.

pub mod bench;
pub mod device;
pub mod device_check;
pub mod summary;
