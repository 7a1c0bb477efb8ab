//! Certificate and CRL signatures verified once per process, not once per
//! handshake.
//!
//! On every mutual-TLS handshake, webpki verifies the CA's signature on the
//! peer's certificate and, when CRLs are configured, the CA's signature on
//! the CRL (webpki does not keep the latter verified: rustls/webpki#81).
//! Those are the same few signatures over and over: one client certificate
//! connects many times, and a CRL changes once a day. In the `connect`
//! benchmark (a new connection per RPC) the two took 17% of the server's
//! CPU, as much as the handshake's own signature and key exchange.
//!
//! So the algorithms that verify certificate chains (rustls'
//! `WebPkiSupportedAlgorithms::all`) are wrapped to remember the signatures
//! they have verified. Why this is sound:
//!
//! * Verifying a signature is a pure function of the algorithm, the public
//!   key, the signed bytes and the signature. An entry is the SHA-256 of all
//!   of them, each length-prefixed: a different key, byte or algorithm is a
//!   different entry, unless SHA-256 collides.
//! * Only successes are remembered. A bad signature is checked, and refused,
//!   every time.
//! * Only the signature arithmetic is skipped. Path building, validity
//!   dates, key usage, name constraints and the revocation lookup itself
//!   (with the CRLs of the moment) still run on every handshake: a
//!   certificate revoked after it was first seen is refused at its next
//!   handshake.
//! * The handshake's own signature (TLS `CertificateVerify`, a proof of
//!   possession of the private key over fresh data) is never remembered:
//!   rustls checks it with the `mapping` algorithms, which stay unwrapped.
//! * The memo is bounded ([`CAPACITY`] entries of 32 bytes); when full it
//!   starts over. Only a CA's key can make new valid signatures, so a peer
//!   cannot fill it with entries, only make it miss.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, OnceLock};

use aws_lc_rs::digest;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{
    AlgorithmIdentifier, FipsStatus, InvalidSignature, SignatureVerificationAlgorithm,
};

/// Entries kept before the memo starts over: many more than the distinct
/// certificates and CRLs a service sees between restarts.
pub const CAPACITY: usize = 4096;

/// The process's memo, shared by every config the kit builds.
static MEMO: LazyLock<Memo> = LazyLock::new(|| Memo::new(CAPACITY));

/// Signatures known to be valid, by digest.
#[derive(Debug)]
struct Memo {
    seen: Mutex<HashSet<[u8; 32]>>,
    capacity: usize,
}

impl Memo {
    fn new(capacity: usize) -> Self {
        Memo {
            seen: Mutex::new(HashSet::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        // A set of digests is never half-updated: a poisoned lock's data
        // is still good.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, entry: &[u8; 32]) -> bool {
        self.lock().contains(entry)
    }

    fn insert(&self, entry: [u8; 32]) {
        let mut seen = self.lock();
        if seen.len() >= self.capacity {
            seen.clear();
        }
        seen.insert(entry);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One of rustls' verification algorithms, remembering its successes in a
/// [`Memo`].
#[derive(Debug)]
struct Memoized {
    inner: &'static dyn SignatureVerificationAlgorithm,
    memo: &'static Memo,
}

impl Memoized {
    fn entry(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [
            b"mtls-kit signature memo v1".as_slice(),
            &self.inner.public_key_alg_id(),
            &self.inner.signature_alg_id(),
            public_key,
            message,
            signature,
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut entry = [0; 32];
        entry.copy_from_slice(ctx.finish().as_ref());
        entry
    }
}

impl SignatureVerificationAlgorithm for Memoized {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let entry = self.entry(public_key, message, signature);
        if self.memo.contains(&entry) {
            return Ok(());
        }
        self.inner
            .verify_signature(public_key, message, signature)?;
        self.memo.insert(entry);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips_status(&self) -> FipsStatus {
        self.inner.fips_status()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// aws-lc-rs' verification algorithms, with the chain-verification list
/// (`all`) memoized in the process's memo and the handshake-signature
/// `mapping` unchanged.
///
/// rustls needs the wrappers `'static`: they are made once per process.
pub fn algorithms() -> WebPkiSupportedAlgorithms {
    static ALL: OnceLock<&'static [&'static dyn SignatureVerificationAlgorithm]> = OnceLock::new();
    let plain = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    WebPkiSupportedAlgorithms {
        all: ALL.get_or_init(|| wrap(plain.all, &MEMO)),
        mapping: plain.mapping,
    }
}

fn wrap(
    all: &'static [&'static dyn SignatureVerificationAlgorithm],
    memo: &'static Memo,
) -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    let wrapped: Vec<&'static dyn SignatureVerificationAlgorithm> = all
        .iter()
        .map(|&inner| -> &'static dyn SignatureVerificationAlgorithm {
            Box::leak(Box::new(Memoized { inner, memo }))
        })
        .collect();
    Box::leak(wrapped.into_boxed_slice())
}

#[cfg(test)]
pub(crate) fn process_memo_contains(
    alg: &'static dyn SignatureVerificationAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let probe = Memoized {
        inner: alg,
        memo: &MEMO,
    };
    MEMO.contains(&probe.entry(public_key, message, signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in algorithm: a signature is valid when it equals the
    /// message reversed; counts how often it is asked.
    #[derive(Debug)]
    struct Counting {
        calls: AtomicUsize,
        alg_id: &'static [u8],
    }

    impl SignatureVerificationAlgorithm for Counting {
        fn verify_signature(
            &self,
            _: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> Result<(), InvalidSignature> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let reversed: Vec<u8> = message.iter().rev().copied().collect();
            if reversed == signature {
                Ok(())
            } else {
                Err(InvalidSignature)
            }
        }
        fn public_key_alg_id(&self) -> AlgorithmIdentifier {
            AlgorithmIdentifier::from_slice(self.alg_id)
        }
        fn signature_alg_id(&self) -> AlgorithmIdentifier {
            AlgorithmIdentifier::from_slice(b"sig")
        }
    }

    fn counting(alg_id: &'static [u8]) -> &'static Counting {
        Box::leak(Box::new(Counting {
            calls: AtomicUsize::new(0),
            alg_id,
        }))
    }

    fn memo(capacity: usize) -> &'static Memo {
        Box::leak(Box::new(Memo::new(capacity)))
    }

    fn calls(alg: &Counting) -> usize {
        alg.calls.load(Ordering::SeqCst)
    }

    #[test]
    fn a_valid_signature_is_verified_once_then_remembered() {
        let alg = counting(b"pk");
        let m = Memoized {
            inner: alg,
            memo: memo(16),
        };
        assert!(m.verify_signature(b"key", b"abc", b"cba").is_ok());
        assert!(m.verify_signature(b"key", b"abc", b"cba").is_ok());
        assert_eq!(calls(alg), 1);
    }

    #[test]
    fn a_bad_signature_is_checked_and_refused_every_time() {
        let alg = counting(b"pk");
        let memo = memo(16);
        let m = Memoized { inner: alg, memo };
        for _ in 0..3 {
            assert!(m.verify_signature(b"key", b"abc", b"abc").is_err());
        }
        assert_eq!(calls(alg), 3);
        assert_eq!(memo.len(), 0);
    }

    #[test]
    fn any_other_key_message_signature_or_algorithm_is_verified_afresh() {
        let alg = counting(b"pk");
        let memo = memo(16);
        let m = Memoized { inner: alg, memo };
        assert!(m.verify_signature(b"key", b"abc", b"cba").is_ok());
        // Another public key: verified again (the stand-in ignores keys).
        assert!(m.verify_signature(b"kez", b"abc", b"cba").is_ok());
        assert_eq!(calls(alg), 2);
        // Another message with the remembered signature: refused.
        assert!(m.verify_signature(b"key", b"abd", b"cba").is_err());
        // Another signature over the remembered message: refused.
        assert!(m.verify_signature(b"key", b"abc", b"cbb").is_err());
        assert_eq!(calls(alg), 4);
        // Length prefixes: moving bytes between the parts is a new entry.
        assert!(m.verify_signature(b"keya", b"bc", b"cb").is_ok());
        assert_eq!(calls(alg), 5);
        // The same inputs under another algorithm, sharing the memo.
        let other = counting(b"other");
        let n = Memoized { inner: other, memo };
        assert!(n.verify_signature(b"key", b"abc", b"cba").is_ok());
        assert_eq!(calls(other), 1);
    }

    #[test]
    fn the_memo_is_bounded() {
        let alg = counting(b"pk");
        let memo = memo(3);
        let m = Memoized { inner: alg, memo };
        for message in [b"a1", b"a2", b"a3", b"a4", b"a5"] {
            let signature: Vec<u8> = message.iter().rev().copied().collect();
            assert!(m.verify_signature(b"key", message, &signature).is_ok());
            assert!(memo.len() <= 3);
        }
        assert_eq!(calls(alg), 5);
    }

    #[test]
    fn only_the_chain_algorithms_are_wrapped() {
        let plain = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let wrapped = algorithms();
        assert_eq!(wrapped.all.len(), plain.all.len());
        for (w, p) in wrapped.all.iter().zip(plain.all) {
            assert!(format!("{w:?}").starts_with("Memoized"), "{w:?}");
            assert_eq!(w.public_key_alg_id(), p.public_key_alg_id());
            assert_eq!(w.signature_alg_id(), p.signature_alg_id());
            assert_eq!(w.fips(), p.fips());
        }
        // The handshake's signatures are checked by the unwrapped mapping.
        assert!(std::ptr::eq(wrapped.mapping, plain.mapping));
        // Made once per process.
        assert!(std::ptr::eq(algorithms().all, wrapped.all));
    }
}
