"""One TFRecord framing scanner (``core.request_log.scan_frames``) for the
request-log writer's crash recovery and the monitor: what it finds in a file the
real writer wrote, whole, cut, zero-filled or corrupt, and that both readers
agree on it. No pipeline needed."""
import google_crc32c
import pytest

from core import request_log
from core.request_log import CLEAN, CORRUPT, CUT, scan_frames, tfrecord_frame
from monitoring import window
from serving.log_writer import RequestLogger


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A file of 10 records of different lengths, from the real writer; its payloads."""
    payloads = [bytes([i]) * (50 + 37 * i) for i in range(10)]
    logger = RequestLogger(tmp_path_factory.mktemp("logs"), rotate_records=100,
                           rotate_seconds=3600).start()
    for payload in payloads:
        assert logger.submit(payload)
    logger.close()
    (path,) = logger.closed_files
    return path.read_bytes(), payloads


def _ends(payloads):
    """Byte offset where each record ends."""
    out, pos = [], 0
    for payload in payloads:
        pos += len(tfrecord_frame(payload))
        out.append(pos)
    return out


def test_the_writers_file_scans_as_tensorflow_reads_it(logged, tmp_path):
    import tensorflow as tf

    data, payloads = logged
    path = tmp_path / "log.tfrecord"
    path.write_bytes(data)
    frames = scan_frames(data)
    assert frames.records == payloads == list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert (frames.end, frames.tail, frames.detail) == (len(data), CLEAN, "")


def test_a_scan_from_a_record_boundary_reads_what_follows(logged):
    data, payloads = logged
    ends = _ends(payloads)
    frames = scan_frames(data, ends[3])
    assert frames.records == payloads[4:] and (frames.end, frames.tail) == (len(data), CLEAN)
    frames = scan_frames(data, ends[3], ends[6])
    assert frames.records == payloads[4:7] and (frames.end, frames.tail) == (ends[6], CLEAN)
    assert scan_frames(data, len(data)).records == [] and scan_frames(b"").tail == CLEAN


def _cases(data, payloads):
    ends = _ends(payloads)
    flipped = bytearray(data)
    flipped[ends[3] + 20] ^= 0xFF                   # inside record 4's payload, records after it
    header = bytearray(data)
    header[ends[5] + 2] ^= 0xFF                     # record 6's length, records after it
    last = bytearray(data)
    last[-10] ^= 0xFF                               # the last record's payload, nothing after it
    return {                                        # name: (bytes, tail, end, words in the detail)
        "cut in a payload": (data[:ends[6] + 40], CUT, ends[6], "needs"),
        "cut in a header": (data[:ends[6] + 5], CUT, ends[6], "header cut"),
        "zeros after the records": (data + bytes(300), CUT, len(data), "zero bytes"),
        "last record fails its checksum": (bytes(last), CUT, ends[8], "last record"),
        "corrupt payload in the middle": (bytes(flipped), CORRUPT, ends[3], "data checksum"),
        "corrupt length in the middle": (bytes(header), CORRUPT, ends[5], "length checksum"),
    }


@pytest.mark.parametrize("case", ["cut in a payload", "cut in a header", "zeros after the records",
                                  "last record fails its checksum", "corrupt payload in the middle",
                                  "corrupt length in the middle"])
def test_the_tail_says_cut_or_corrupt_and_both_readers_agree(logged, tmp_path, case):
    data, payloads = logged
    damaged, tail, end, words = _cases(data, payloads)[case]
    frames = scan_frames(damaged)
    assert (frames.tail, frames.end) == (tail, end) and words in frames.detail
    assert frames.records == payloads[:_ends(payloads).index(end) + 1]
    # the writer's recovery keeps exactly those records ...
    assert request_log.complete_records(damaged) == (len(frames.records), end)
    # ... and the monitor counts none of the file, saying why
    path = tmp_path / "requests-x.tfrecord"
    path.write_bytes(damaged)
    error = window.TruncatedLogError if tail == CUT else window.CorruptLogError
    with pytest.raises(error) as caught:
        window.read_part(window.Part(path))
    assert type(caught.value) is error and frames.detail in str(caught.value)


def test_an_empty_file_is_cut_for_the_monitor(tmp_path):
    path = tmp_path / "requests-empty.tfrecord"
    path.touch()
    with pytest.raises(window.TruncatedLogError, match="empty"):
        window.read_part(window.Part(path))


def test_the_monitor_reads_from_the_offset_it_analysed_up_to(logged, tmp_path):
    data, payloads = logged
    ends = _ends(payloads)
    path = tmp_path / "requests-grown.tfrecord"
    path.write_bytes(data[:ends[4]])
    first = window.read_part(window.Part(path))
    assert first.records == payloads[:5] and first.end == ends[4]
    path.write_bytes(data)                          # whole records appended
    second = window.read_part(window.Part(path, start=first.end, prefix_crc=first.crc))
    assert second.records == payloads[5:] and (second.start, second.end) == (ends[4], len(data))
    assert second.crc == google_crc32c.value(data)       # of every byte analysed, for the next check
    with pytest.raises(window.ReplacedLogError, match="differ"):
        window.read_part(window.Part(path, start=first.end, prefix_crc=first.crc ^ 1))
    path.write_bytes(data[:ends[2]])
    with pytest.raises(window.ReplacedLogError, match="shrank"):
        window.read_part(window.Part(path, start=first.end, prefix_crc=first.crc))
