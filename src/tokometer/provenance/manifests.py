"""C2PA text manifests: a signed C2PA manifest store appended to a generated text, as the
C2PA specification embeds one in unstructured text (Appendix A.8: a U+FEFF and a run of
invisible variation selectors, encoded by the `c2pa-text` package).

The manifest says the text was created by a trained model (IPTC's
`trainedAlgorithmicMedia`), which model, by which producer, under which event id, and binds
the text with a `c2pa.hash.data` hard binding: SHA-256 of the NFC form of the text in UTF-8,
the wrapper at its end excluded. The exclusion must name the wrapper's length before the
manifest is signed, so the wrapper is padded to the worst-case length of a manifest of the
signer's (fixed) size, as `c2pa-text` pads it.

It is signed by the ledger's Ed25519 key (the same key that signs tree heads) under a
certificate chain derived from that key: a root whose key is derived from it, and a leaf for
the key itself, both with fixed serials and validity, so every replica holding the key
presents the same chain, and a verifier trusts the root `tokometer provenance c2pa-chain`
prints. The C2PA SDK (`c2pa-python`, the Rust library's C API) signs; its Python wrapper does
not expose data-hash signing, so the few C functions used are declared here, for the
pinned version.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import hmac
import json
import re
import threading
import unicodedata
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

TRAINED_MODEL = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_VALID_FROM = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_ROOT_UNTIL = datetime.datetime(2050, 1, 1, tzinfo=datetime.UTC)
_LEAF_UNTIL = datetime.datetime(2049, 12, 31, tzinfo=datetime.UTC)
_FORMAT = b"application/c2pa"  # a bare manifest store: the text wrapper is ours to make
# A wrapper already in a text (the model repeated an answer signed earlier): a text holds one
# (A.8), so the old one goes (its own text is no longer the whole, so it could not verify).
_WRAPPER = re.compile("\ufeff[\ufe00-\ufe0f\U000e0100-\U000e01ef]{13,}")


def certificate_chain(secret: bytes, producer: str) -> tuple[bytes, bytes]:
    """(the chain in PEM, leaf first; the root alone in PEM) for the signing key whose raw
    bytes are `secret`. Deterministic: Ed25519 signatures are, and every field is fixed."""
    key = Ed25519PrivateKey.from_private_bytes(secret)
    root_key = Ed25519PrivateKey.from_private_bytes(
        hmac.digest(secret, b"tokometer c2pa root v1", "sha256"))

    def name(role: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, producer[:64]),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"tokometer {role}")])

    def serial(public: Any) -> int:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return int.from_bytes(hashlib.sha256(raw).digest()[:16]) >> 1 or 1

    root = (x509.CertificateBuilder().subject_name(name("C2PA root")).issuer_name(name("C2PA root"))
            .public_key(root_key.public_key()).serial_number(serial(root_key.public_key()))
            .not_valid_before(_VALID_FROM).not_valid_after(_ROOT_UNTIL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, None))
    leaf = (x509.CertificateBuilder().subject_name(name("answers")).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(serial(key.public_key()))
            .not_valid_before(_VALID_FROM).not_valid_after(_LEAF_UNTIL)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root_key.public_key()), critical=False)
            .sign(root_key, None))
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    return leaf.public_bytes(serialization.Encoding.PEM) + root_pem, root_pem


def _plain(name: str) -> str:
    """A provider's model name as a manifest can hold it: valid Unicode, 200 characters."""
    return name.encode("utf-8", "replace").decode("utf-8")[:200]


class _SignerInfo(ctypes.Structure):
    _fields_ = [("alg", ctypes.c_char_p), ("sign_cert", ctypes.c_char_p),
                ("private_key", ctypes.c_char_p), ("ta_url", ctypes.c_char_p)]


def _library() -> Any:
    """The C2PA SDK's C library, with the functions used here declared."""
    try:
        import c2pa_text  # type: ignore[import-untyped]  # noqa: F401
        from c2pa.lib import dynamically_load_library  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("C2PA manifests need the c2pa extra: pip install 'tokometer[c2pa]'"
                          ) from None
    lib = dynamically_load_library()
    out = ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))
    for name, args, result in (
        ("c2pa_builder_from_json", [ctypes.c_char_p], ctypes.c_void_p),
        ("c2pa_builder_free", [ctypes.c_void_p], None),
        ("c2pa_signer_from_info", [ctypes.POINTER(_SignerInfo)], ctypes.c_void_p),
        ("c2pa_builder_data_hashed_placeholder",
         [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, out], ctypes.c_int64),
        ("c2pa_builder_sign_data_hashed_embeddable",
         [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
          ctypes.c_void_p, out], ctypes.c_int64),
        ("c2pa_manifest_bytes_free", [ctypes.POINTER(ctypes.c_ubyte)], None),
        ("c2pa_error", [], ctypes.c_void_p),
        ("c2pa_string_free", [ctypes.c_void_p], None),
    ):
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


class TextManifests:
    """Signs generated texts: `sign` gives the text with its manifest appended."""

    def __init__(self, secret: bytes, producer: str):
        import c2pa_text

        self._wrap = c2pa_text.encode_wrapper_padded
        self._worst_case = c2pa_text.worst_case_wrapper_byte_length
        self._lib = _library()
        self.producer = producer
        self.chain, self.root = certificate_chain(secret, producer)
        pem = Ed25519PrivateKey.from_private_bytes(secret).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        info = _SignerInfo(b"ed25519", self.chain, pem, None)
        self._signer = self._lib.c2pa_signer_from_info(ctypes.byref(info))
        if not self._signer:
            raise ConfigError(f"C2PA signer: {self._error()}")
        self._size = 0  # the signed manifest's size in bytes (fixed for a signer)
        self._lock = threading.Lock()  # one signing at a time on the shared signer

    def sign(self, text: str, *, event_id: str, model: str | None) -> str:
        """`text` (in its NFC form, without any wrapper it held) with a manifest that binds
        it; as it came if it is no Unicode text (a lone surrogate: no UTF-8 to hash). Blocks
        ~1 ms: call it off the event loop."""
        try:
            text = unicodedata.normalize("NFC", _WRAPPER.sub("", text))
            text.encode("utf-8")
        except UnicodeEncodeError:
            return text
        return text + (self.wrapper(text, event_id=event_id, model=model) or "")

    def wrapper(self, text: str, *, event_id: str, model: str | None) -> str | None:
        """The wrapper to append to `text`, which has gone out as it is (a stream's): its
        manifest binds the text's NFC form, as a verifier normalises it. None when the text
        cannot be bound: it holds a wrapper already, or is no Unicode text. Blocks ~1 ms."""
        if _WRAPPER.search(text):
            return None
        try:
            covered = unicodedata.normalize("NFC", text).encode("utf-8")
        except UnicodeEncodeError:
            return None
        definition = json.dumps({
            "claim_generator_info": [{"name": "tokometer", "version": "0.1.0"}],
            "title": f"answer {event_id}", "format": "text/plain",
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created", "digitalSourceType": TRAINED_MODEL,
                    "softwareAgent": {"name": _plain(model or "unknown model")}}]}},
                {"label": "org.tokometer.answer",
                 "data": {"event_id": event_id, "producer": self.producer}}]}).encode()
        with self._lock:
            for _ in range(3):  # a first signing learns the size; it does not change after
                length = self._worst_case(self._size)
                manifest = self._signed(definition, covered, length)
                if len(manifest) == self._size:
                    wrapper: str = self._wrap(manifest, length)
                    return wrapper
                self._size = len(manifest)
        raise RuntimeError("the C2PA manifest's size does not settle")

    def _signed(self, definition: bytes, covered: bytes, wrapper_length: int) -> bytes:
        lib, out = self._lib, ctypes.POINTER(ctypes.c_ubyte)()
        builder = lib.c2pa_builder_from_json(definition)
        if not builder:
            raise RuntimeError(f"C2PA manifest: {self._error()}")
        try:
            if lib.c2pa_builder_data_hashed_placeholder(builder, 0, _FORMAT,
                                                        ctypes.byref(out)) < 0:
                raise RuntimeError(f"C2PA placeholder: {self._error()}")
            lib.c2pa_manifest_bytes_free(out)
            binding = json.dumps({
                "name": "jumbf manifest", "alg": "sha256", "pad": [],
                "hash": list(hashlib.sha256(covered).digest()),
                "exclusions": [{"start": len(covered), "length": wrapper_length}]}).encode()
            size = lib.c2pa_builder_sign_data_hashed_embeddable(
                builder, self._signer, binding, _FORMAT, None, ctypes.byref(out))
            if size < 0:
                raise RuntimeError(f"C2PA signing: {self._error()}")
            try:
                return ctypes.string_at(out, size)
            finally:
                lib.c2pa_manifest_bytes_free(out)
        finally:
            lib.c2pa_builder_free(builder)

    def _error(self) -> str:
        pointer = self._lib.c2pa_error()
        if not pointer:
            return "unknown error"
        try:
            return ctypes.string_at(pointer).decode("utf-8", "replace")
        finally:
            self._lib.c2pa_string_free(pointer)
