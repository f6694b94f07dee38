//! How the ranks of an NCCL communicator agree on its unique id: rank 0 asks NCCL for one and
//! broadcasts it over MPI in a message of a flag byte and the id's 128 bytes; a rank 0 that
//! could not make one still broadcasts (flag 0), so that every rank fails alike instead of
//! waiting. Pure framing, tested without NCCL.

use std::ffi::c_char;

/// Bytes of NCCL's unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// Bytes of the message rank 0 broadcasts.
pub const ID_MESSAGE_BYTES: usize = 1 + UNIQUE_ID_BYTES;

/// The message for `id`, or for no id when rank 0 could not make one.
pub fn unique_id_message(id: Option<&[c_char; UNIQUE_ID_BYTES]>) -> [u8; ID_MESSAGE_BYTES] {
    let mut message = [0u8; ID_MESSAGE_BYTES];
    if let Some(id) = id {
        message[0] = 1;
        message[1..].iter_mut().zip(id).for_each(|(byte, &c)| *byte = c as u8);
    }
    message
}

/// The id in a broadcast message; `None` when rank 0 could not make one.
pub fn unique_id_from_message(message: &[u8; ID_MESSAGE_BYTES]) -> Option<[c_char; UNIQUE_ID_BYTES]> {
    (message[0] == 1).then(|| std::array::from_fn(|i| message[1 + i] as c_char))
}

/// `ncclGetVersion`'s code as `major.minor.patch` (NCCL >= 2.9 codes it as
/// major * 10000 + minor * 100 + patch).
pub fn nccl_version(code: i32) -> String {
    format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unique_id_survives_its_broadcast_message() {
        let id: [c_char; UNIQUE_ID_BYTES] = std::array::from_fn(|i| (i as i32 - 64) as c_char);
        let message = unique_id_message(Some(&id));
        assert_eq!(message.len(), 129);
        assert_eq!(message[0], 1);
        assert_eq!(unique_id_from_message(&message), Some(id));
    }

    #[test]
    fn a_message_without_an_id_is_refused() {
        assert_eq!(unique_id_from_message(&unique_id_message(None)), None);
        assert_eq!(unique_id_from_message(&[0u8; ID_MESSAGE_BYTES]), None);
    }

    #[test]
    fn version_codes_read_as_major_minor_patch() {
        assert_eq!(nccl_version(22803), "2.28.3");
        assert_eq!(nccl_version(23000), "2.30.0");
    }
}
