//! The collector's wall clock, in Unix nanoseconds like every timestamp in the
//! store and on the wire. A leaf so that domain code takes the time without
//! importing the authentication module.

/// Now, in nanoseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
