//! Group management. The frames are part of protocol v1; this server version answers them
//! with UNIMPLEMENTED (groups arrive in a later release).

use tern_proto::v1::envelope::Body;

use crate::error::DispatchError;

/// The answer to every group request for now.
pub fn unimplemented() -> Result<Body, DispatchError> {
    Err(DispatchError::Unimplemented("group management"))
}
