//! Where modules keep their per-account data in [`AccountData`](super::AccountData): the module names
//! and key schemes of vCards, private XML and offline messages, named once here so that the modules
//! that write them and the XEP-0227 import/export (`piefxis`) that reads and writes them
//! behind the modules' backs cannot drift apart. Storage sits below the modules, so the definitions
//! live here and the modules use them.

/// `mod_vcard`: one value per account, under [`VCARD_KEY`]: the `<vCard xmlns='vcard-temp'/>` as XML.
pub const VCARD: &str = "vcard";
pub const VCARD_KEY: &str = "";

/// `mod_private`: one value per stored element, under [`private_key`], the element as XML with its
/// namespace declared on itself.
pub const PRIVATE: &str = "private";

/// `mod_offline`: one value per message, under an [`arrival_key`] so that key order is arrival order;
/// the value is the message as the account will receive it (`from` stamped, `jabber:client`, a XEP-0203
/// `<delay/>`).
pub const OFFLINE: &str = "offline";

/// The key of a private element: `{namespace}local-name`.
pub fn private_key(namespace: &str, local_name: &str) -> String {
    format!("{{{namespace}}}{local_name}")
}

/// A key that sorts in arrival order: the time in nanoseconds since the Unix epoch, then a sequence
/// number that orders what arrives within one nanosecond. Fixed width, so text order is number order.
pub fn arrival_key(unix_nanos: u128, seq: u32) -> String {
    format!("{unix_nanos:024}{seq:010}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn arrival_keys_sort_by_time_then_sequence() {
        let a = super::arrival_key(9, 7);
        let b = super::arrival_key(10, 0);
        let c = super::arrival_key(10, 1);
        assert!(a < b && b < c);
        assert_eq!(a.len(), 34);
    }
}
