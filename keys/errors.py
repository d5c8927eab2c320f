"""The exception tree of NRM Exchange.

`NrmError` is the root. Below it, `UntrustedInputError` covers everything that can go wrong
with data that came from outside (the bus, a peer, a file); each failure kind is its own class
with a stable `reason` code, which is what agents record and the audit ledger counts.
Misuse by a caller raises `TypeError`/`ValueError`/`RuntimeError` instead.
"""

from __future__ import annotations


class NrmError(Exception):
    """Root of every error raised on purpose by NRM Exchange."""


class UntrustedInputError(NrmError):
    """Input from outside was refused. `reason` is a stable, metadata-only code."""

    reason = "untrusted-input"


class MalformedError(UntrustedInputError):
    """Bytes that are not a well-formed, canonical, within-limits encoding."""

    reason = "malformed"


class WeakKeyError(MalformedError):
    """An X25519 public key nobody can safely seal to: of small order (its shared secret
    with any key is all zero, or one of eight values) or not canonically encoded (u at or
    above 2^255 - 19, or the top bit set), PROTOCOL.md §2.1."""

    reason = "weak-key"


class UnknownKeyError(UntrustedInputError):
    """A key id that no trusted identity holds (or that belongs to another agency)."""

    reason = "unknown-key"


class RetiredKeyError(UntrustedInputError):
    """A key that is past the end of its validity window."""

    reason = "retired-key"


class RevokedKeyError(UntrustedInputError):
    """A key used after its revocation time."""

    reason = "revoked-key"


class BadSignatureError(UntrustedInputError):
    """A signature that does not verify."""

    reason = "bad-signature"


class MissingProofError(UntrustedInputError):
    """An identity file without a proof of possession (written before the proof existed)."""

    reason = "missing-proof"


class BadProofError(BadSignatureError):
    """An identity file whose proof of possession does not verify under its signing key."""

    reason = "bad-proof"


class DecryptionError(UntrustedInputError):
    """Ciphertext that does not authenticate under the key it claims."""

    reason = "undecryptable"


class NotAddressedToMeError(UntrustedInputError):
    """An envelope that does not name this agency and one of its keys as a recipient."""

    reason = "not-addressed-to-me"


class SealedToUnknownKeyError(NotAddressedToMeError):
    """An envelope naming this agency as a recipient, sealed to a key id it does not hold:
    perhaps its own new key, from a directory the sender saw first (PROTOCOL.md §4.7)."""


class ExpiredError(UntrustedInputError):
    """An envelope past its expiry, or created further in the future than skew allows."""

    reason = "expired"


class ReplayedError(UntrustedInputError):
    """A message id that was already received in another delivery."""

    reason = "replayed"


class KeyFileError(NrmError):
    """A key file that cannot be read: wrong passphrase, corrupted, or wrong format."""


class KeyFileExistsError(KeyFileError):
    """Refusing to overwrite existing key material."""


class UnexpectedMessageError(UntrustedInputError):
    """A well-formed, authentic message that makes no sense here: an unknown kind, or a
    receipt for a message this agency never sent to that agency."""

    reason = "unexpected"


class ChainGapError(UnexpectedMessageError):
    """A protection notice following one the receiver does not hold (yet): perhaps only out
    of order (a restore, a key still loading), so it may be held back within the grace of
    an unknown key before it is refused `unexpected` (PROTOCOL §8.9)."""


class ReusedReferralIdError(ReplayedError):
    """A referral whose id its sender already used for another referral to this agency
    (PROTOCOL.md §6.1): a sender assigns each referral a new id."""

    reason = "reused-referral-id"


class NotSharedError(UnexpectedMessageError):
    """A transition, withdrawal or other message about a referral that its sender and this
    agency do not share: one another agency sent, or one never sent between them
    (PROTOCOL.md §8.4-8.5)."""

    reason = "not-shared"


class NotEnoughSignaturesError(UntrustedInputError):
    """Signed metadata with fewer distinct valid signatures from trusted keys than the
    threshold requires (and none of the trusted keys' signatures was bad)."""

    reason = "under-signed"


class RollbackError(UntrustedInputError):
    """Signed metadata whose version is not the one that may follow the trusted version."""

    reason = "rolled-back"


class ExpiredMetadataError(ExpiredError):
    """Signed metadata (a root or a directory) past its expiry time."""

    reason = "expired-metadata"


class ExpiredRootError(ExpiredMetadataError):
    """The newest trusted root is past its expiry (§7.5): nothing is trusted under it until
    a newer root arrives. Older roots of the chain may have expired; only the newest counts."""

    reason = "expired-root"


class InclusionProofError(UntrustedInputError):
    """A Merkle inclusion proof that does not prove the leaf is in the tree it names."""

    reason = "bad-inclusion-proof"


class ConsistencyProofError(UntrustedInputError):
    """A Merkle consistency proof that does not prove one tree extends the other."""

    reason = "bad-consistency-proof"


# --- receiver-side checks of a message body (docs/PROTOCOL.md §6.4) ---------------------------


class TooDeepError(MalformedError):
    """A body that nests deeper than `Limits.max_body_depth`, found before parsing it."""

    reason = "too-deep"


class OutOfRangeError(MalformedError):
    """A number in a body outside what the format allows: a JSON integer beyond
    ±(2^53 - 1) (RFC 7493 I-JSON), a float, NaN or an infinity."""

    reason = "out-of-range"


class UnknownMemberError(UntrustedInputError):
    """A body (a message object, a referral or its `body`) with a member its format does not
    define."""

    reason = "unknown-member"


class SchemaInvalidError(UntrustedInputError):
    """A body that fails its schema (a referral against referral v1, another kind against
    its field table)."""

    reason = "schema-invalid"


class CategoryNotAllowedError(UntrustedInputError):
    """A referral carrying a data category that none of the receiver's directory roles may
    ever receive (PROTOCOL.md §8.2): the sender did not minimise."""

    reason = "category-not-allowed"


class NotAnonymousError(UntrustedInputError):
    """An anonymous notification carrying a field or location member outside the coded
    allow-list (free text, open codes, anything identifying)."""

    reason = "not-anonymous"


class UnlawfulBasisError(UntrustedInputError):
    """A referral about an adult under a legal basis other than consent that the national
    policy does not let its sender's roles use without consent (PROTOCOL §7.11)."""

    reason = "unlawful-basis"


class ChildRouteIncompleteError(UntrustedInputError):
    """A schema v2 referral about a child (or a disputed age) without what the child route
    needs: a child's legal basis and a `legal_basis_ref` of the national policy's list
    (PROTOCOL §8.2 step 4)."""

    reason = "child-route-incomplete"


class UnknownServiceError(UntrustedInputError):
    """A referral whose `service` names the receiver and a service not in the receiver's own
    catalogue, or another agency that the receiver's directory lists with no provider role
    (PROTOCOL §6.4, §8.2 step 5)."""

    reason = "unknown-service"


class NotForThisRoleError(UntrustedInputError):
    """A message kind or referral type that the receiver's directory roles never receive
    (an escalation or an anonymous notification to an agency that is not a coordinator)."""

    reason = "not-for-this-role"


class NotAnAuthorityError(UntrustedInputError):
    """A statistics contribution from an agency the receiver's directory does not list as a
    competent authority (PROTOCOL.md §8.11)."""

    reason = "not-an-authority"


class UnknownReasonCodeError(UntrustedInputError):
    """A transition whose reason code is not in the closed vocabulary (PROTOCOL.md §8.4)."""

    reason = "unknown-reason-code"


class UnknownOutcomeCodeError(UntrustedInputError):
    """A closed step whose outcome is not in the closed outcome vocabulary (PROTOCOL.md §8.4).
    An agent of 0.3.0 refuses the outcomes it does not know as `malformed` instead."""

    reason = "unknown-outcome-code"


class BadDecisionError(UntrustedInputError):
    """An identification decision whose reason and salt do not belong to it, or that does
    not fit the decisions of its case the receiver holds (PROTOCOL.md §8.7)."""

    reason = "bad-decision"


class TooEarlyError(UntrustedInputError):
    """A second-stage decision before the national policy's minimum interval after the
    first stage (PROTOCOL.md §8.7)."""

    reason = "too-early"


class MisdatedError(UntrustedInputError):
    """An identification decision whose `decided_at` is further than the clock skew from
    the `created` time of the envelope that carries it (PROTOCOL.md §8.7): post-dated past
    the second-stage interval, or backdated into an older key's window."""

    reason = "misdated"


class OtherCaseError(UntrustedInputError):
    """An identification decision under a pair the receiver holds decisions of another
    authority's, or another case's, for (PROTOCOL.md §8.7): a pair belongs to one case."""

    reason = "other-case"


class ErasedPairError(UntrustedInputError):
    """An identification decision or protection notice under a pair whose received referral
    this agency erased (consent withdrawal, PROTOCOL.md §8.5): what it held about the person
    under that pair went with it, and nothing more about them is taken under it."""

    reason = "erased"


class OutOfTimeError(UntrustedInputError):
    """A reconsideration request later than the national policy's
    `reconsideration_window_days` after the decision it names (PROTOCOL.md §8.7
    "Reconsideration requests")."""

    reason = "out-of-time"


class AlreadyDecidedError(UntrustedInputError):
    """An identification decision of a stage the receiver already holds a decision of for
    that case, superseding nothing (PROTOCOL.md §8.7)."""

    reason = "already-decided"


class UnprocessableError(UntrustedInputError):
    """An authentic message whose handling failed for a reason no other class names (a bug,
    a value the store cannot hold): refused for good rather than retried or dropped."""

    reason = "unprocessable"
