//! Sealing model updates so that only the current aggregator can read them: ephemeral-static
//! X25519, HKDF-SHA256 and ChaCha20-Poly1305 (RustCrypto), the modern equivalent of rafty's
//! RSA.
//!
//! The aggregator holds an [`AggregatorKey`] in memory only; its public half goes to the
//! log. A participant seals each update with a fresh ephemeral key pair: the shared secret
//! of its ephemeral secret and the aggregator's public key, expanded by HKDF over both
//! public keys, gives a one-time cipher key and nonce. The caller's associated data (round
//! and sender) is authenticated too, so a sealed update cannot be replayed into another
//! round or passed off as another node's. An update sealed for another key (an earlier
//! aggregator's) is refused before any decryption is tried, and any flipped bit anywhere
//! fails authentication: both come back as typed errors, never as a panic.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey, ReusableSecret, SharedSecret};

/// Domain separation for the key derivation (a new scheme gets a new label).
const HKDF_INFO: &[u8] = b"weft fedavg update seal v1";
/// Cipher key and nonce lengths.
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Why an update could not be sealed or opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The update was sealed for a different public key: an earlier aggregator's.
    #[error("sealed for key {sealed_for}, not this aggregator's key {current}")]
    WrongRecipient {
        /// Fingerprint of the key it was sealed for.
        sealed_for: String,
        /// Fingerprint of the key that can open it now.
        current: String,
    },
    /// Authentication failed: the ciphertext, the ephemeral key or the associated data
    /// was altered.
    #[error("authentication failed: the sealed bytes or their header were tampered with")]
    Tampered,
    /// A public key is a low-order point, whose shared secret an attacker knows.
    #[error("degenerate public key (low-order point)")]
    WeakKey,
}

/// A sealed update as it is stored: who can open it, the sender's one-time public key,
/// and the authenticated ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The aggregator public key it was sealed for.
    pub recipient: [u8; 32],
    /// The sender's ephemeral public key.
    pub ephemeral: [u8; 32],
    /// ChaCha20-Poly1305 output: ciphertext and 16-byte tag.
    pub ciphertext: bytes::Bytes,
}

/// The aggregator's key pair for one round. The secret never leaves the process (it is
/// zeroed when dropped), so an aggregator that dies takes it along.
pub struct AggregatorKey {
    secret: ReusableSecret,
    public: [u8; 32],
}

impl AggregatorKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> AggregatorKey {
        let secret = ReusableSecret::random();
        let public = PublicKey::from(&secret).to_bytes();
        AggregatorKey { secret, public }
    }

    /// The public half, to be committed to the log.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Opens `sealed` if it was sealed for this key with associated data `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.recipient != self.public {
            return Err(SealError::WrongRecipient {
                sealed_for: fingerprint(&sealed.recipient),
                current: fingerprint(&self.public),
            });
        }
        let shared = self
            .secret
            .diffie_hellman(&PublicKey::from(sealed.ephemeral));
        let (cipher, nonce) = derive(&shared, &sealed.ephemeral, &self.public)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Tampered)
    }
}

/// Seals `plaintext` for the aggregator whose public key is `recipient`, authenticating
/// `aad` along with it.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Sealed, SealError> {
    let secret = EphemeralSecret::random();
    let ephemeral = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(*recipient));
    let (cipher, nonce) = derive(&shared, &ephemeral, recipient)?;
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::Tampered)?;
    Ok(Sealed {
        recipient: *recipient,
        ephemeral,
        ciphertext: ciphertext.into(),
    })
}

/// The one-time cipher and nonce of a shared secret, bound to both public keys.
fn derive(
    shared: &SharedSecret,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<(ChaCha20Poly1305, Nonce), SealError> {
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let mut okm = [0u8; KEY_LEN + NONCE_LEN];
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(HKDF_INFO, &mut okm)
        .expect("44 bytes is a valid HKDF-SHA256 output length");
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&okm[..KEY_LEN]));
    Ok((cipher, *Nonce::from_slice(&okm[KEY_LEN..])))
}

/// A short, stable name for a public key in log lines: the first 8 bytes of its SHA-256,
/// in hex.
pub fn fingerprint(public: &[u8; 32]) -> String {
    Sha256::digest(public)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_any_change_is_caught() {
        let key = AggregatorKey::generate();
        let sealed = seal(&key.public(), b"weights", b"round 3 node 2").unwrap();
        assert_eq!(key.open(&sealed, b"round 3 node 2").unwrap(), b"weights");
        // Another round or sender in the associated data.
        assert_eq!(
            key.open(&sealed, b"round 4 node 2"),
            Err(SealError::Tampered)
        );
        // Every single flipped bit of the ciphertext or the ephemeral key.
        for i in 0..sealed.ciphertext.len() * 8 {
            let mut bad = sealed.clone();
            let mut ct = bad.ciphertext.to_vec();
            ct[i / 8] ^= 1 << (i % 8);
            bad.ciphertext = ct.into();
            assert!(key.open(&bad, b"round 3 node 2").is_err(), "bit {i}");
        }
        let mut bad = sealed.clone();
        bad.ephemeral[5] ^= 0x10;
        assert!(key.open(&bad, b"round 3 node 2").is_err());
        // A new aggregator cannot read what was sealed for the old one.
        let next = AggregatorKey::generate();
        match next.open(&sealed, b"round 3 node 2") {
            Err(SealError::WrongRecipient {
                sealed_for,
                current,
            }) => {
                assert_eq!(sealed_for, fingerprint(&key.public()));
                assert_eq!(current, fingerprint(&next.public()));
            }
            other => panic!("{other:?}"),
        }
        // Even if the header is rewritten to name the new key, the tag does not verify.
        let mut forged = sealed.clone();
        forged.recipient = next.public();
        assert_eq!(
            next.open(&forged, b"round 3 node 2"),
            Err(SealError::Tampered)
        );
    }

    #[test]
    fn low_order_keys_are_refused() {
        // The all-zero point has order 1: every shared secret with it is zero.
        assert_eq!(seal(&[0; 32], b"x", b"").unwrap_err(), SealError::WeakKey);
        let key = AggregatorKey::generate();
        let mut sealed = seal(&key.public(), b"x", b"").unwrap();
        sealed.ephemeral = [0; 32];
        assert_eq!(key.open(&sealed, b""), Err(SealError::WeakKey));
    }

    #[test]
    fn each_seal_uses_a_fresh_ephemeral_key() {
        let key = AggregatorKey::generate();
        let a = seal(&key.public(), b"same", b"").unwrap();
        let b = seal(&key.public(), b"same", b"").unwrap();
        assert_ne!(a.ephemeral, b.ephemeral);
        assert_ne!(a.ciphertext, b.ciphertext);
    }
}
