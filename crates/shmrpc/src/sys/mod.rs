//! The operating-system layer: segments of shared memory, futexes, eventfd doorbells,
//! process liveness and file-descriptor passing.
//!
//! This is one of the two layers allowed to use `unsafe` (the other is [`crate::ring`]);
//! each `unsafe` block names the obligation it meets. System calls go through `rustix`.

pub mod doorbell;
pub mod fdpass;
pub mod futex;
pub mod names;
pub mod proc;
pub mod segment;

pub use doorbell::Doorbell;
pub use segment::{
    CreateError, OpenError, OpenOrCreateError, Segment, SegmentStatus, StatusError,
    SEGMENT_HEADER_SIZE,
};
