//! `sso = "adfs"`: the gateway as the AD FS that Exchange's claims authentication trusts.

pub mod wsfed;
