//! C2SP signed notes (`signed-note`) and transparency-log checkpoints (`tlog-checkpoint`),
//! with Ed25519 keys.
//!
//! A checkpoint is the note text
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//! ```
//!
//! followed by a blank line and one signature line per signer:
//! `— <key name> <base64(4-byte key id || Ed25519 signature)>`. The key id is the first four
//! bytes of `SHA-256(name || "\n" || 0x01 || public key)`. Keys are written as
//! `<name>+<hex key id>+<base64(0x01 || public key)>` (verifier) and
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>` (signer), so any signed-note
//! implementation can check Callgate's checkpoints.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use std::fmt;
use thiserror::Error;

use crate::merkle::Hash;

/// The algorithm byte for Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 1;

/// What is wrong with a key, note or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Note(&'static str),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("no signature by a known key verifies")]
    Unverified,
    #[error("a signature by {name} does not verify")]
    BadSignature { name: String },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A public key that checks signatures on notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: u32,
    public: [u8; 32],
}

impl Verifier {
    /// Parses `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected <name>+<hash>+<key>"));
        };
        if !valid_name(name) {
            return Err(NoteError::Key("invalid key name"));
        }
        if hash.len() != 8 {
            return Err(NoteError::Key("the key hash is not 8 hex digits"));
        }
        let id = u32::from_str_radix(hash, 16).map_err(|_| NoteError::Key("bad key hash"))?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64"))?;
        let (&alg, public) = raw.split_first().ok_or(NoteError::Key("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::Key("not an Ed25519 key"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::Key("an Ed25519 key has 32 bytes"))?;
        if key_id(name, &public) != id {
            return Err(NoteError::Key("the key hash does not match the key"));
        }
        Ok(Verifier {
            name: name.to_string(),
            id,
            public,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    fn check(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public);
        write!(f, "{}+{:08x}+{}", self.name, self.id, STANDARD.encode(raw))
    }
}

/// A private key that signs notes.
pub struct Signer {
    name: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
    verifier: Verifier,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the seed.
        f.debug_struct("Signer")
            .field("verifier", &self.verifier.to_string())
            .finish()
    }
}

impl Signer {
    /// A new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Signer, NoteError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| NoteError::Key("no randomness available"))?;
        Signer::from_seed(name, seed)
    }

    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Signer, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name is non-empty, without spaces or '+'",
            ));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::Key("not an Ed25519 seed"))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::Key("unexpected public key length"))?;
        let verifier = Verifier {
            name: name.to_string(),
            id: key_id(name, &public),
            public,
        };
        Ok(Signer {
            name: name.to_string(),
            seed,
            pair,
            verifier,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<Signer, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("expected PRIVATE+KEY+<name>+<hash>+<key>"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected PRIVATE+KEY+<name>+<hash>+<key>"));
        };
        let raw = STANDARD
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64"))?;
        let (&alg, seed) = raw.split_first().ok_or(NoteError::Key("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::Key("not an Ed25519 key"));
        }
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::Key("an Ed25519 seed has 32 bytes"))?;
        let signer = Signer::from_seed(name, seed)?;
        if format!("{:08x}", signer.verifier.id) != hash {
            return Err(NoteError::Key("the key hash does not match the key"));
        }
        Ok(signer)
    }

    /// The private key in signed-note form. Only for the key file.
    pub fn private_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.verifier.id,
            STANDARD.encode(raw)
        )
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The signature line for `text`.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.pair.sign(text.as_bytes());
        let mut raw = self.verifier.id.to_be_bytes().to_vec();
        raw.extend_from_slice(sig.as_ref());
        format!("\u{2014} {} {}\n", self.name, STANDARD.encode(raw))
    }
}

/// Signs note `text` (which must end in a newline) with every signer, in order.
pub fn sign(text: &str, signers: &[&Signer]) -> Result<String, NoteError> {
    check_text(text)?;
    let mut out = String::with_capacity(text.len() + 1 + 120 * signers.len());
    out.push_str(text);
    out.push('\n');
    for s in signers {
        out.push_str(&s.signature_line(text));
    }
    Ok(out)
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Note("the text does not end in a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Note("the text holds control characters"));
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    pub signature: Vec<u8>,
}

/// A note split into its text and signatures, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Note("no blank line before the signatures"))?;
        let text = &note[..split + 1];
        check_text(text)?;
        let sigs = &note[split + 2..];
        if !sigs.ends_with('\n') {
            return Err(NoteError::Note("the last signature line has no newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Note(
                "a signature line does not start with an em dash",
            ))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Note("a signature line has no signature"))?;
            if !valid_name(name) {
                return Err(NoteError::Note("invalid signer name"));
            }
            let raw = STANDARD
                .decode(b64)
                .map_err(|_| NoteError::Note("a signature is not base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Note("a signature is too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(NoteError::Note("no signatures"));
        }
        Ok(Note {
            text: text.to_string(),
            signatures,
        })
    }

    /// The verifiers among `known` whose signature on this note verifies. A signature by a
    /// known key (same name and id) that does not verify is an error, not a skip: it means the
    /// note was altered or forged.
    pub fn verify<'a>(&self, known: &'a [Verifier]) -> Result<Vec<&'a Verifier>, NoteError> {
        let mut ok = Vec::new();
        for sig in &self.signatures {
            let Some(v) = known
                .iter()
                .find(|v| v.name == sig.name && v.id == sig.key_id)
            else {
                continue;
            };
            if !v.check(self.text.as_bytes(), &sig.signature) {
                return Err(NoteError::BadSignature {
                    name: sig.name.clone(),
                });
            }
            ok.push(v);
        }
        if ok.is_empty() {
            return Err(NoteError::Unverified);
        }
        Ok(ok)
    }
}

/// The body of a `tlog-checkpoint` note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text (three lines, each ending in a newline).
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint's note text; extension lines after the root are allowed and ignored.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .filter(|s| s.len() == 1 || !s.starts_with('0'))
            .and_then(|s| s.parse().ok())
            .ok_or(NoteError::Checkpoint(
                "the tree size is not a decimal number",
            ))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(NoteError::Checkpoint(
                "the root is not a base64 SHA-256 hash",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// Signs this checkpoint.
    pub fn sign(&self, signers: &[&Signer]) -> Result<String, NoteError> {
        sign(&self.text(), signers)
    }

    /// Parses a signed checkpoint and checks it against `known` keys.
    pub fn open(note: &str, known: &[Verifier]) -> Result<Checkpoint, NoteError> {
        let note = Note::parse(note)?;
        note.verify(known)?;
        Checkpoint::parse(&note.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str) -> Signer {
        Signer::from_seed(name, [7u8; 32]).unwrap()
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let s = signer("callgate.example/audit");
        let priv_text = s.private_text();
        let again = Signer::parse(&priv_text).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let v = Verifier::parse(&s.verifier().to_string()).unwrap();
        assert_eq!(&v, s.verifier());
        assert!(format!("{s:?}").find(&priv_text[30..]).is_none());
    }

    /// The signed-note specification's own example key: `PeterNeumann`.
    #[test]
    fn reads_the_spec_example_verifier_key() {
        let v =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), 0xc74f20a3);
    }

    #[test]
    fn checkpoints_sign_and_verify() {
        let s = signer("log.example");
        let cp = Checkpoint {
            origin: "log.example".into(),
            size: 12,
            root: [3u8; 32],
        };
        let note = cp.sign(&[&s]).unwrap();
        assert!(note.contains("\n\n\u{2014} log.example "));
        assert_eq!(
            Checkpoint::open(&note, &[s.verifier().clone()]).unwrap(),
            cp
        );
        // Altering any part of the text breaks the signature.
        let forged = note.replace("\n12\n", "\n13\n");
        assert_eq!(
            Checkpoint::open(&forged, &[s.verifier().clone()]),
            Err(NoteError::BadSignature {
                name: "log.example".into()
            })
        );
        // An unknown key proves nothing.
        let other = Signer::from_seed("log.example", [9u8; 32]).unwrap();
        assert_eq!(
            Checkpoint::open(&note, &[other.verifier().clone()]),
            Err(NoteError::Unverified)
        );
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        for bad in [
            "",
            "no blank line\n",
            "text\n\nno dash sig\n",
            "text\n\n\u{2014} name\n",
            "text\n\n\u{2014} name AAAA\n",
            "text\n\n\u{2014} name !!!!\n",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "name",
            "name+1234+AAAA",
            "na me+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["o\n012\nAAAA\n", "o\n1\nnot base64\n", "\n1\n", "o\n-1\n"] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
