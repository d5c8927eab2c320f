"""HTTPS for the HTTP APIs and their clients (runtime/tls.py), with trustme certificates."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from runtime.endpoint import BusTls, EndpointError
from runtime.tls import HttpsFiles, TlsFileError, client_context, url_host

from .support import Pki


async def test_a_server_of_https_files_serves_clients_of_its_ca_over_tls_1_2_or_later(
    tmp_path: Path,
) -> None:
    """A client trusting the CA is served; one trusting only the system's CAs is not; the
    server offers no TLS older than 1.2."""
    pki = Pki(tmp_path)
    files = HttpsFiles(*pki.issue("c", "127.0.0.1"))
    context = files.server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=client_context(tmp_path / "ca.pem")) as r:
                assert (r.status, await r.text()) == (200, "ok")
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(url):
                    pass
    finally:
        await runner.cleanup()


def test_unusable_files_are_named(tmp_path: Path) -> None:
    """A CA file or a certificate/key pair that cannot be loaded raises TlsFileError naming it."""
    with pytest.raises(TlsFileError, match=r"missing\.pem"):
        client_context(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsFileError, match=r"junk\.pem"):
        HttpsFiles(tmp_path / "junk.pem", tmp_path / "junk.pem").server_context()
    assert (url_host("::1"), url_host("127.0.0.1")) == ("[::1]", "127.0.0.1")


def test_a_key_others_may_read_or_an_encrypted_key_is_refused_naming_it(tmp_path: Path) -> None:
    """The HTTPS key and the bus client key: readable by other users (0644) is refused with
    the chmod to run; an encrypted PEM key is refused at once (no passphrase prompt)."""
    files = HttpsFiles(*Pki(tmp_path).issue("c", "127.0.0.1"))
    files.key_file.chmod(0o644)
    with pytest.raises(TlsFileError, match=r"readable by other users \(mode 0644\): chmod 600"):
        files.server_context()
    with pytest.raises(EndpointError, match="readable by other users"):
        BusTls(cert_file=files.cert_file, key_file=files.key_file).context()
    files.key_file.chmod(0o600)
    files.server_context()

    key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase nobody types"),
    )
    files.key_file.write_bytes(encrypted)
    with pytest.raises(TlsFileError, match="is encrypted: give an unencrypted PEM key"):
        files.server_context()
    with pytest.raises(EndpointError, match="is encrypted"):
        BusTls(cert_file=files.cert_file, key_file=files.key_file).context()
