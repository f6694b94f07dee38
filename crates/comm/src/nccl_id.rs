//! How the ranks of an NCCL communicator agree on its unique id: rank 0 asks NCCL for one and
//! broadcasts it over MPI in a message of a flag byte and the id's 128 bytes; a rank 0 that
//! could not make one still broadcasts (flag 0 and NCCL's result code), so that every rank fails
//! alike, naming the code, instead of waiting. Pure framing, tested without NCCL.

use std::ffi::c_char;

/// Bytes of NCCL's unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// Bytes of the message rank 0 broadcasts.
pub const ID_MESSAGE_BYTES: usize = 1 + UNIQUE_ID_BYTES;

/// The message for rank 0's `ncclGetUniqueId`: the id, or the result code it failed with.
pub fn unique_id_message(id: Result<&[c_char; UNIQUE_ID_BYTES], u32>) -> [u8; ID_MESSAGE_BYTES] {
    let mut message = [0u8; ID_MESSAGE_BYTES];
    match id {
        Ok(id) => {
            message[0] = 1;
            message[1..].iter_mut().zip(id).for_each(|(byte, &c)| *byte = c as u8);
        }
        Err(code) => message[1..5].copy_from_slice(&code.to_le_bytes()),
    }
    message
}

/// The id in a broadcast message, or the result code rank 0's `ncclGetUniqueId` failed with.
pub fn unique_id_from_message(message: &[u8; ID_MESSAGE_BYTES]) -> Result<[c_char; UNIQUE_ID_BYTES], u32> {
    if message[0] == 1 {
        Ok(std::array::from_fn(|i| message[1 + i] as c_char))
    } else {
        Err(u32::from_le_bytes([message[1], message[2], message[3], message[4]]))
    }
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
        let message = unique_id_message(Ok(&id));
        assert_eq!(message.len(), 129);
        assert_eq!(message[0], 1);
        assert_eq!(unique_id_from_message(&message), Ok(id));
    }

    /// Every rank learns the code rank 0's ncclGetUniqueId failed with (3: ncclInternalError).
    #[test]
    fn a_message_without_an_id_carries_rank_0s_result_code() {
        assert_eq!(unique_id_from_message(&unique_id_message(Err(3))), Err(3));
        assert_eq!(unique_id_from_message(&unique_id_message(Err(u32::MAX))), Err(u32::MAX));
    }

    #[test]
    fn version_codes_read_as_major_minor_patch() {
        assert_eq!(nccl_version(22803), "2.28.3");
        assert_eq!(nccl_version(23000), "2.30.0");
    }
}
