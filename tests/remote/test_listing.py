"""The object-store listing that finds movies: a multipart upload is seen only once complete,
each movie is reported once, and again when it is replaced."""

from __future__ import annotations

from emlive.remote.listing import ListingWatcher
from emlive.remote.location import open_remote

from .conftest import S3

PART = 5 * 1024 * 1024  # S3's smallest part but the last


def test_a_multipart_upload_is_found_once_complete_and_once_only(s3: S3) -> None:
    client = s3.client()
    watcher = ListingWatcher(open_remote("s3://bucket/session/raw/"))
    assert watcher.poll(now_s=0.0, final=False) == []  # nothing uploaded yet: no error
    client.put_object(Bucket="bucket", Key="session/raw/notes.txt", Body=b"not a movie")
    client.put_object(Bucket="bucket", Key="session/raw/.a.tmp-1@host-x.mrc", Body=b"x")
    upload = client.create_multipart_upload(Bucket="bucket", Key="session/raw/grid1/a.tif")
    first = client.upload_part(Bucket="bucket", Key="session/raw/grid1/a.tif", UploadId=upload["UploadId"],
                               PartNumber=1, Body=b"0" * PART)
    assert watcher.poll(now_s=1.0, final=False) == []  # a part is there, the object is not
    last = client.upload_part(Bucket="bucket", Key="session/raw/grid1/a.tif", UploadId=upload["UploadId"],
                              PartNumber=2, Body=b"1" * 10)
    client.complete_multipart_upload(
        Bucket="bucket", Key="session/raw/grid1/a.tif", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": last["ETag"]}]},
    )
    [found] = watcher.poll(now_s=2.0, final=False)
    assert (found.rel_path, found.stat.size_bytes, found.reason) == ("grid1/a.tif", PART + 10, None)
    assert found.stat.mtime_ns > 0
    assert watcher.poll(now_s=3.0, final=False) == []  # reported once
    client.put_object(Bucket="bucket", Key="session/raw/grid1/a.tif", Body=b"replaced")
    [again] = watcher.poll(now_s=4.0, final=False)
    assert (again.rel_path, again.stat.size_bytes) == ("grid1/a.tif", 8)
    assert watcher.unsettled == 0 and watcher.mode == "listing"
