//! Counter-based randomness: a value that depends only on (seed, index), so that any process can
//! remake exactly the slice it needs (random init of a shard, a dropout mask in a recompute).
//! `#[inline]` so that loops over indices in other crates vectorise (shard-zero's normal draws).

/// splitmix64's finaliser.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// 64 random bits for element `index` of stream `seed`.
#[inline]
pub fn mix(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(index))
}

/// A stream seed for a name (e.g. a parameter's), combined with a run seed.
pub fn stream(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    seed ^ splitmix64(fnv)
}

/// A uniform draw in [0, 1) for element `index` of stream `seed`.
#[inline]
pub fn uniform(seed: u64, index: u64) -> f64 {
    (mix(seed, index) >> 11) as f64 / (1u64 << 53) as f64
}
