from perftune.bench.sse import DONE, parse_reads


def test_events_split_across_reads_take_the_completing_reads_time() -> None:
    reads = [(1, b'data: {"a"'), (2, b": 1}\n"), (3, b"\ndata: [DONE]\n\n")]
    ev = parse_reads(reads)
    assert [(e.t_ns, e.data) for e in ev] == [(3, b'{"a": 1}'), (3, DONE)]


def test_several_events_in_one_read_share_its_timestamp() -> None:
    ev = parse_reads([(7, b"data: 1\n\ndata: 2\n\n")])
    assert [(e.t_ns, e.data) for e in ev] == [(7, b"1"), (7, b"2")]


def test_keepalive_comments_and_crlf_are_handled() -> None:
    ev = parse_reads([(1, b": ping\r\n\r\n"), (2, b"data: x\r\n\r\n"), (3, b"event: foo\n\n")])
    assert [(e.t_ns, e.data) for e in ev] == [(2, b"x")]


def test_unterminated_final_event_is_kept_with_last_read_time() -> None:
    ev = parse_reads([(1, b"data: a\n\n"), (5, b"data: b")])
    assert [(e.t_ns, e.data) for e in ev] == [(1, b"a"), (5, b"b")]


def test_data_without_space_and_multiline_data() -> None:
    ev = parse_reads([(1, b"data:x\ndata: y\n\n")])
    assert ev[0].data == b"x\ny"
