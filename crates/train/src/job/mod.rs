//! The job around the run: how it starts (deadline, shared output dir), stops on request, fails on purpose in tests, and ends.

pub mod error_text;
pub mod fault_injection;
pub mod interrupt;
pub mod job_end;
pub mod shared_dir;
pub mod startup_deadline;
