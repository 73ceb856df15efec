"""The observation index: name parsing, grouping by exposure, listing a field."""

from __future__ import annotations

from pathlib import Path

import pytest

from constellation.io.observations import (
    FileRef,
    group_files,
    list_observations,
    parse_vis_name,
)
from constellation.io.storage import Storage
from constellation.simulate.run import FieldSummary

TS1 = "20241017T042839.727728Z"
TS2 = "20241017T042840.962295Z"
TS3 = "20241017T042841.073406Z"
PSF = "EUC_VIS_GRD-PSF-000-000000-0000000__20240322T192915.424564Z.fits"


def _ref(name: str, obs: int = 2681) -> FileRef:
    parsed = parse_vis_name(f"s3://b/q1/VIS/{obs}/{name}")
    return FileRef(f"s3://b/q1/VIS/{obs}/{name}", 100, "e", parsed.timestamp if parsed else "")


def swl(kind: str, obs: int, dither: int, n: int, ts: str) -> str:
    return f"EUC_VIS_SWL-{kind}-{obs:06d}-{dither:02d}-{n}-0000000__{ts}.fits"


def test_parse_names() -> None:
    p = parse_vis_name(f"s3://b/q1/VIS/2681/{swl('DET', 2681, 1, 2, TS1)}")
    assert p is not None
    assert (p.kind, p.obs_id, p.dither, p.expnum, p.timestamp) == ("DET", 2681, 1, 2, TS1)
    for kind in ("BKG", "WGT"):
        q = parse_vis_name(swl(kind, 2704, 3, 1, TS2))
        assert q is not None
        assert q.kind == kind
    psf = parse_vis_name(f"s3://b/q1/VIS/2704/{PSF}")
    assert psf is not None
    assert (psf.kind, psf.obs_id, psf.dither) == ("PSF", 2704, None)


@pytest.mark.parametrize(
    "name",
    [
        "EUC_VIS_SWL_WGT-002681-00-1-0000000__20241017T042839.727728Z.fits",  # underscore
        "EUC_VIS_SWL-DET-2681-00-1-0000000__20241017T042839.727728Z.fits",  # 4-digit obs
        "EUC_VIS_SWL-DET-002681-00-1__20241017T042839.727728Z_sci.fits",  # Q2 style
        "EUC_VIS_SWL-DET-002681-00-1-0000000__20241017T042839.727728Z.fits.xml",
        "EUC_VIS_SWL-FOO-002681-00-1-0000000__20241017T042839.727728Z.fits",
        "README.txt",
    ],
)
def test_malformed_names_are_reported(name: str) -> None:
    assert parse_vis_name(name) is None
    index = group_files([_ref(swl("DET", 2681, 0, 1, TS1)), _ref(name)])
    assert index.unmatched == [f"s3://b/q1/VIS/2681/{name}"]
    assert len(index.exposures) == 1


def test_group_by_exposure_never_by_timestamp() -> None:
    refs = [
        _ref(swl("DET", 2681, 0, 1, TS1)),
        _ref(swl("BKG", 2681, 0, 1, TS2)),
        _ref(swl("WGT", 2681, 0, 1, TS3)),
        _ref(swl("DET", 2681, 0, 2, TS1)),  # same timestamp, other exposure
        _ref(swl("DET", 2681, 1, 1, TS2)),
        _ref(PSF),
    ]
    index = group_files(refs)
    assert [e.key for e in index.exposures] == ["002681-00-1", "002681-00-2", "002681-01-1"]
    e = index.exposures[0]
    assert e.det is not None
    assert e.bkg is not None
    assert e.wgt is not None
    assert (e.det.timestamp, e.bkg.timestamp, e.wgt.timestamp) == (TS1, TS2, TS3)
    assert index.exposures[1].bkg is None
    assert all(x.psf is not None and x.psf.url.endswith(PSF) for x in index.exposures)
    assert not index.unmatched
    assert not index.incomplete


def test_duplicates_keep_newest_and_report_older() -> None:
    old, new = swl("DET", 2681, 0, 1, TS1), swl("DET", 2681, 0, 1, TS3)
    old_psf = "EUC_VIS_GRD-PSF-000-000000-0000000__20230101T000000.000000Z.fits"
    index = group_files([_ref(new), _ref(old), _ref(PSF), _ref(old_psf)])
    (e,) = index.exposures
    assert e.det is not None
    assert e.det.url.endswith(new)
    assert e.psf is not None
    assert e.psf.url.endswith(PSF)
    assert sorted(r.url.rsplit("/", 1)[1] for r in index.superseded) == sorted([old, old_psf])


def test_exposure_without_det_is_incomplete() -> None:
    index = group_files([_ref(swl("BKG", 2681, 2, 1, TS2)), _ref(swl("DET", 2681, 0, 1, TS1))])
    assert [e.key for e in index.exposures] == ["002681-00-1"]
    assert [e.key for e in index.incomplete] == ["002681-02-1"]


def test_psf_outside_an_obs_directory() -> None:
    index = group_files([_ref(PSF, obs=0), FileRef(f"s3://b/q1/VIS/misc/{PSF}", 1, None, "")])
    assert index.psf_without_obs == [f"s3://b/q1/VIS/misc/{PSF}"]


def test_list_light_field(light_field: tuple[Path, FieldSummary]) -> None:
    root, summary = light_field
    index = list_observations(Storage(), str(root / "q1" / "VIS"))
    expected = sorted(e.key for e in summary.plan.exposures)
    assert [(e.obs_id, e.dither, e.expnum) for e in index.exposures] == expected
    assert {e.expnum for e in index.exposures} == {1, 2}
    for e in index.exposures:
        assert e.det is not None
        assert e.bkg is not None
        assert e.wgt is not None
        assert e.psf is not None
        assert e.det.size > 0
        assert e.det.etag  # local files: the modification time stands in
        assert len({e.det.timestamp, e.bkg.timestamp, e.wgt.timestamp}) == 3
    assert not index.unmatched
    assert len(index.files()) == 2 * len(expected) + len(summary.plan.obs_ids)
