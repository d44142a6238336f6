"""A real OpenSSH server on a free loopback port, as the bastion in front of a source."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import stop

__all__ = ["SSHD", "SSHD_BINARY", "run_sshd"]

SSHD_BINARY = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class SSHD:
    host: str
    port: int
    username: str
    private_key: str  # PEM (OpenSSH format) of a key the server accepts
    host_key_line: str  # "ssh-ed25519 AAAA…", the server's public host key
    wrong_key: str  # a key the server does not accept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )


@contextmanager
def run_sshd(folder: Path, username: str = "root") -> Iterator[SSHD]:
    """Start ``sshd -D`` with keys made for the occasion; stop it on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key", "wrong_key"):
        _keygen(folder / name)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                f"PidFile {folder / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "PermitOpen any",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    proc = subprocess.Popen(
        [str(SSHD_BINARY), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"sshd did not start: {err}") from None
                time.sleep(0.05)
        host_key = " ".join((folder / "host_key.pub").read_text().split()[:2])
        yield SSHD(
            "127.0.0.1",
            port,
            username,
            (folder / "client_key").read_text(),
            host_key,
            (folder / "wrong_key").read_text(),
        )
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)
