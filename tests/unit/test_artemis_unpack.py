"""The Artemis distribution is unpacked only when every member stays inside the folder it is
unpacked into (Python before 3.11.4 has no extraction filters, so each member is checked)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from flowscope.infra.artemis import checked_members


def _archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            data = b"#!/bin/sh\n" if member.isreg() else None
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
            mode: int = 0o755) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode = kind, link, mode
    return member


def test_a_well_formed_distribution_is_kept_whole_without_set_id_bits(tmp_path: Path) -> None:
    path = _archive(tmp_path / "ok.tar.gz", _member("apache-artemis/bin", tarfile.DIRTYPE),
                    _member("apache-artemis/bin/artemis", mode=0o4777),
                    _member("apache-artemis/lib/current", tarfile.SYMTYPE, "../bin"))
    with tarfile.open(path) as archive:
        members = checked_members(archive, tmp_path / "into")
    assert [m.name for m in members] == ["apache-artemis/bin", "apache-artemis/bin/artemis",
                                         "apache-artemis/lib/current"]
    assert members[1].mode == 0o755


@pytest.mark.parametrize("bad", [
    _member("../escape"), _member("/etc/passwd"),
    _member("apache-artemis/evil", tarfile.SYMTYPE, "../../outside"),
    _member("apache-artemis/hard", tarfile.LNKTYPE, "../outside"),
    _member("apache-artemis/device", tarfile.CHRTYPE)])
def test_a_member_that_would_leave_the_folder_or_is_a_device_is_refused(
        tmp_path: Path, bad: tarfile.TarInfo) -> None:
    path = _archive(tmp_path / "bad.tar.gz", _member("apache-artemis/bin/artemis"), bad)
    with tarfile.open(path) as archive, pytest.raises(tarfile.TarError, match=bad.name):
        checked_members(archive, tmp_path / "into")
