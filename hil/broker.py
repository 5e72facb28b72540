"""A real Mosquitto broker for tests and the lab rig, on free loopback ports.

`Mosquitto(...)` writes a config into a temporary folder and runs the Debian `mosquitto` binary:
a plain listener, and optionally a TLS listener (username/password) and a mutual-TLS listener
(client certificate CN = user name), with a CA, server and client certificates made here with
`cryptography`, a password file (PBKDF2-SHA512, mosquitto's `$7$` format) and the ACL of the grid
contract (spec section 1): a device writes only its own status/telemetry/ack topics and reads its
own `cmd` and its site's `all/cmd`; the operator writes every `cmd` topic and reads everything.
`stop()` kills it, `restart()` brings it back on the same ports (persistence on).
"""

from __future__ import annotations

import base64
import datetime
import getpass
import hashlib
import ipaddress
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.errors import BrokerError

BINARY_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")
OPERATOR_USER = "operator"


def find_binary() -> str:
    for path in BINARY_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("mosquitto")
    if found is None:
        raise BrokerError("mosquitto not found: install the Debian package mosquitto (make setup)")
    return found


def free_port() -> int:
    """A TCP port that is free on the loopback interface now (for a broker or a test server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def password_hash(password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """A mosquitto 2.x password-file hash: $7$ITERATIONS$b64(salt)$b64(PBKDF2-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(devices: dict[str, str], prefix: str = "gridminer",
             operator: str = OPERATOR_USER) -> str:
    """The ACL of spec section 1 for `devices` ({device id (= user name): site})."""
    lines = [
        "# devices: write their own topics only (never a cmd topic)",
        f"pattern write {prefix}/+/%u/status",
        f"pattern write {prefix}/+/%u/telemetry",
        f"pattern write {prefix}/+/%u/ack",
        f"pattern write {prefix}/+/%u/ack/#",
        "",
    ]
    for device, site in sorted(devices.items()):
        lines += [
            f"user {device}",
            f"topic read {prefix}/{site}/{device}/cmd",
            f"topic read {prefix}/{site}/all/cmd",
            "",
        ]
    lines += [f"user {operator}", f"topic write {prefix}/+/+/cmd", f"topic read {prefix}/#", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ClientCert:
    cert_file: str
    key_file: str


class CertificateAuthority:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and client certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridminer test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = str(folder / "ca.crt")
        Path(self.ca_file).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, server: bool = False) -> ClientCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.folder / f"{common_name}.crt"
        key_file = self.folder / f"{common_name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        return ClientCert(str(cert_file), str(key_file))


class Mosquitto:
    """A Mosquitto broker on loopback; see the module docstring.

    auth=False: anonymous clients, no ACL (fast unit-of-work tests).
    auth=True: users = `devices` (id -> site) plus "operator", each with a generated password
    (`password(user)`), ACL per spec section 1. tls=True adds `tls_url` (password auth over TLS)
    and `mtls_url` (client certificate required; its CN is the user name, `client_cert(user)`).
    """

    def __init__(
        self,
        *,
        auth: bool = False,
        tls: bool = False,
        devices: dict[str, str] | None = None,
        prefix: str = "gridminer",
        folder: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.auth = auth or tls
        self.tls = tls
        self.devices = dict(devices or {})
        self.prefix = prefix
        self.binary = binary or find_binary()
        self._own_folder = folder is None
        self.folder = Path(folder) if folder is not None else Path(
            tempfile.mkdtemp(prefix="gridminer-mosquitto-"))
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.mtls_port = free_port() if tls else None
        self.passwords: dict[str, str] = {}
        self.ca: CertificateAuthority | None = None
        self._certs: dict[str, ClientCert] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    # ---- addresses and credentials ------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise BrokerError("broker started without tls=True")
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def mtls_url(self) -> str:
        if self.mtls_port is None:
            raise BrokerError("broker started without tls=True")
        return f"mqtts://127.0.0.1:{self.mtls_port}"

    @property
    def ca_file(self) -> str:
        if self.ca is None:
            raise BrokerError("broker started without tls=True")
        return self.ca.ca_file

    @property
    def log_file(self) -> Path:
        return self.folder / "mosquitto.log"

    def password(self, user: str) -> str:
        return self.passwords[user]

    def password_file_for(self, user: str) -> str:
        """A 0600 file holding `user`'s password (what the agent's password_file expects)."""
        path = self.folder / f"{user}.password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.passwords[user] + "\n")
        return str(path)

    def client_cert(self, user: str) -> ClientCert:
        if self.ca is None:
            raise BrokerError("broker started without tls=True")
        if user not in self._certs:
            self._certs[user] = self.ca.issue(user)
        return self._certs[user]

    def add_device(self, device: str, site: str) -> None:
        """A new device user (takes effect at the next start/restart)."""
        self.devices[device] = site
        self._write_config()

    # ---- configuration ------------------------------------------------------------------------
    def _write_config(self) -> None:
        folder = self.folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {folder / 'data'}/",
            "autosave_interval 1",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_keepalive 300",
            "max_connections -1",  # a site's fleet: as many as the open-file limit allows
            "set_tcp_nodelay true",
            f"allow_anonymous {'false' if self.auth else 'true'}",
        ]
        if self.auth:
            users = [*sorted(self.devices), OPERATOR_USER]
            for user in users:
                self.passwords.setdefault(user, secrets.token_urlsafe(12))
            pw_file = folder / "passwords"
            pw_file.write_text("".join(f"{u}:{password_hash(self.passwords[u])}\n" for u in users))
            os.chmod(pw_file, 0o600)
            acl_file = folder / "acl"
            acl_file.write_text(acl_text(self.devices, self.prefix))
            os.chmod(acl_file, 0o600)
            lines += [f"password_file {pw_file}", f"acl_file {acl_file}"]
        lines += ["", f"listener {self.port} 127.0.0.1"]
        if self.tls:
            if self.ca is None:
                self.ca = CertificateAuthority(folder)
                self._server = self.ca.issue("localhost", server=True)
            tls_common = [
                f"cafile {self.ca.ca_file}",
                f"certfile {self._server.cert_file}",
                f"keyfile {self._server.key_file}",
            ]
            lines += ["", f"listener {self.tls_port} 127.0.0.1", *tls_common,
                      "require_certificate false"]
            lines += ["", f"listener {self.mtls_port} 127.0.0.1", *tls_common,
                      "require_certificate true", "use_identity_as_username true"]
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    # ---- process ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        if self.process is not None and self.process.poll() is None:
            return self
        _open_file_limit_to_hard()  # inherited by the broker
        with open(self.folder / "stderr.log", "ab") as err:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.folder / "mosquitto.conf")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout_s
        ports = [p for p in (self.port, self.tls_port, self.mtls_port) if p is not None]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited ({self.process.returncode}): {self._tail()}")
            if all(_accepts(p) for p in ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen within {timeout_s:g} s: {self._tail()}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill the broker (SIGKILL by default: what a crash looks like to clients)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)

    def restart(self, down_s: float = 0.0, sig: int = signal.SIGKILL) -> Mosquitto:
        """Stop, stay down `down_s`, start again on the same ports."""
        self.stop(sig)
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tail(self) -> str:
        text = ""
        for name in ("stderr.log", "mosquitto.log"):
            try:
                text += (self.folder / name).read_text(errors="replace")[-800:]
            except OSError:
                pass
        return text.strip() or "(no log)"


def _open_file_limit_to_hard() -> None:
    """This process's open-file limit raised to the hard limit, for the broker to inherit (one
    file per client; the usual soft limit of 1024 is below a site's fleet)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit the kernel caps lower
            pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
