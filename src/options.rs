//! Send options with Tribes' bit values (`Channel.SEND_OPTIONS_*`).

use std::fmt;

/// How a message is sent. The bits are Tribes' so a Tomcat `channelSendOptions` value means the
/// same here: 8 asynchronous, 2 use-ack, 6 (2|4) synchronized-ack.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SendOptions(pub u32);

impl SendOptions {
    /// Wait until every destination has read the frame (`SEND_OPTIONS_USE_ACK`).
    pub const USE_ACK: SendOptions = SendOptions(0x02);
    /// With `USE_ACK`: the ack is sent after the listener processed the message, and a listener
    /// error comes back as a failure for that member (`SEND_OPTIONS_SYNCHRONIZED_ACK`).
    pub const SYNCHRONIZED_ACK: SendOptions = SendOptions(0x04);
    /// Queue the message and return at once (`SEND_OPTIONS_ASYNCHRONOUS`). Per-destination order
    /// is kept, unlike Tribes' dispatch pool.
    pub const ASYNCHRONOUS: SendOptions = SendOptions(0x08);
    /// Synchronized ack as Tomcat users write it: `6`.
    pub const SYNC_ACK: SendOptions = SendOptions(0x06);
    /// Set by the channel on a payload it compressed (Tribes' `GzipInterceptor` flag, 0x100);
    /// the receiving channel decompresses and clears it. An application's own 0x100 is cleared
    /// before sending.
    pub(crate) const COMPRESSED: u32 = 0x100;

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: SendOptions) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether the send is asynchronous (queued, answered before it leaves).
    pub fn is_async(self) -> bool {
        self.contains(SendOptions::ASYNCHRONOUS)
    }
    /// Whether the sender waits for an ack (use-ack or synchronized-ack).
    pub fn wants_ack(self) -> bool {
        self.contains(SendOptions::USE_ACK) || self.contains(SendOptions::SYNCHRONIZED_ACK)
    }
    /// Whether the sender waits until the receiver's listeners handled the message.
    pub fn wants_sync_ack(self) -> bool {
        self.contains(SendOptions::SYNCHRONIZED_ACK)
    }

    /// Parses Tomcat's forms: a number (`"6"`) or a comma-separated list of names
    /// (`"async,use_ack"`; names as `Channel.parseSendOptions` accepts them).
    pub fn parse(s: &str) -> Result<SendOptions, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u32>() {
            return Ok(SendOptions(n));
        }
        let mut bits = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            bits |= match name.to_ascii_lowercase().as_str() {
                "asynchronous" | "async" => 0x08,
                "use_ack" => 0x02,
                "synchronized_ack" | "sync" => 0x04,
                "byte_message" | "byte" => 0x01,
                "secure" => 0x10,
                "udp" => 0x20,
                "multicast" => 0x40,
                other => return Err(format!("unknown send option '{other}'")),
            };
        }
        Ok(SendOptions(bits))
    }

    /// Synchronized ack implies use-ack, as in Tribes.
    pub(crate) fn normalized(self) -> SendOptions {
        if self.contains(SendOptions::SYNCHRONIZED_ACK) {
            SendOptions(self.0 | SendOptions::USE_ACK.0)
        } else {
            self
        }
    }
}

impl std::ops::BitOr for SendOptions {
    type Output = SendOptions;
    fn bitor(self, rhs: SendOptions) -> SendOptions {
        SendOptions(self.0 | rhs.0)
    }
}

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.is_async() {
            names.push("async");
        }
        if self.contains(SendOptions::USE_ACK) {
            names.push("use_ack");
        }
        if self.wants_sync_ack() {
            names.push("synchronized_ack");
        }
        write!(f, "SendOptions({} = {})", self.0, names.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomcat_values() {
        assert_eq!(SendOptions::parse("8").unwrap(), SendOptions::ASYNCHRONOUS);
        assert_eq!(
            SendOptions::parse("async").unwrap(),
            SendOptions::ASYNCHRONOUS
        );
        assert_eq!(
            SendOptions::parse("use_ack,sync").unwrap(),
            SendOptions::SYNC_ACK
        );
        assert!(SendOptions::parse("fast").is_err());
        assert!(SendOptions(4).normalized().wants_ack());
        assert!(!SendOptions::ASYNCHRONOUS.wants_ack());
    }
}
