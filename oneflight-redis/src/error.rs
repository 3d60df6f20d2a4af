//! [`FleetError`]: Redis could not help, for callers that asked to be told.

use std::fmt;

/// Redis failed and the fleet was built with
/// [`OnRedisError::Fail`](crate::OnRedisError::Fail): returned by
/// [`Fleet::try_work`](crate::Fleet::try_work), converted into the caller's error type.
///
/// ```
/// let error = oneflight_redis::FleetError::new("no answer within 1s");
/// assert_eq!(error.to_string(), "redis unavailable for the fleet: no answer within 1s");
/// let as_io: std::io::Error = error.into();
/// assert_eq!(as_io.kind(), std::io::ErrorKind::Other);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetError {
    reason: String,
}

impl FleetError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        FleetError {
            reason: reason.into(),
        }
    }

    /// What Redis said, or that it did not answer in time.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis unavailable for the fleet: {}", self.reason)
    }
}

impl std::error::Error for FleetError {}

impl From<FleetError> for std::io::Error {
    fn from(error: FleetError) -> Self {
        std::io::Error::other(error)
    }
}

impl From<FleetError> for String {
    fn from(error: FleetError) -> Self {
        error.to_string()
    }
}
