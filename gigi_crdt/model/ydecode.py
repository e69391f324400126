"""A total, bounded decoder for Yjs update v1 (lib0 encoding), in pure Python.

Updates from the network cannot go to pycrdt (yrs 0.28) unchecked: small crafted ones panic,
hang or crash it (see ``yupdate``). This module reads the binary format without pycrdt,
so that ``yupdate`` can check an update before anything applies it.

Format (Yjs ``src/utils/encoding.js`` readClientsStructRefs, ``src/utils/UpdateDecoder.js``
UpdateDecoderV1, ``src/structs/Item.js`` readItem/contentRefs, ``src/utils/DeleteSet.js``
readDeleteSet; yrs ``update.rs`` Update::decode and ``block.rs`` ItemContent::decode)::

    update     = varuint(#clients) client* delete_set
    client     = varuint(#structs) varuint(client id) varuint(first clock) struct*
    struct     = info:u8 ...   GC (info 0): varuint(length); Skip (info 10): varuint(length);
                 Item: info = content ref (low 5 bits) | 0x80 origin | 0x40 right origin
                 | 0x20 parent sub; then [origin id] [right origin id]; if neither origin:
                 varuint(1) root name, or varuint(0) parent id; then [parent sub key]; content
    id         = varuint(client) varuint(clock)
    delete_set = varuint(#clients) (varuint(client) varuint(#ranges) (varuint(clock) varuint(len))*)*

Strings are varuint length + UTF-8. lib0 ``Any`` (decoding.js readAny) is a tag byte:
127 undefined, 126 null, 125 varint, 124 float32, 123 float64, 122 bigint64, 121 false,
120 true, 119 string, 118 map (count, then key string + value each), 117 array, 116 bytes.

Rules:

* Total: every malformed input raises ``UnsafeUpdate``, nothing else. Reads past the end
  raise ``IndexError`` inside the loops and invalid UTF-8 raises ``UnicodeDecodeError``;
  both are mapped to ``UnsafeUpdate`` at the single entry point, because Python checks
  every index already and checking twice would double the cost of the hot loops.
* Bounded: varints are at most 10 bytes; every count is checked against the bytes that
  remain before anything loops on it; Any values nest at most ``max_depth`` deep and are
  read without recursion; client ids stay below 2**53 and clocks (a struct's end, clock +
  length, included) below 2**31. yrs clocks are u32, and a GC struct whose end overflows
  them panics yrs (the ``panic-clock-overflow`` fixture); worse, yrs computes ``state -
  clock`` in i32 when integrating (update.rs Update::integrate), so a struct more than
  2**31 ahead of what the receiver holds of a known client panics it too (found by the
  structure-aware fuzz in ``tests/test_yupdate.py``). No real client comes near 2**31.
* Where yrs and Yjs read the same bytes differently, the decoder refuses the construct
  rather than guess which reading applies: legacy JSON content (yrs reads one string more
  than the count says), XML hook types (Yjs reads a name, yrs does not), content refs with
  bit 0x10 set (yrs masks it away), and GC/Skip infos with flag bits. Client sections
  without structs and repeated client sections are refused too: no encoder writes them.
* Empty structs are refused: an empty item of a client the receiver knows panics yrs
  (found by the fuzz), although yrs itself writes a String emptied by deletes that way.
* Strings are checked to be UTF-8: yrs reads them with ``from_utf8_unchecked``.
* Embed, Format and Doc payloads are checked as UTF-8 strings and Any values only; their
  JSON is not parsed, since no conversation schema admits these kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack
from typing import NamedTuple, TypeAlias

from ..errors import SchemaError

MAX_CLOCK = 2**31 - 1
RECORD_ENTRIES = 8  # the fields of a signed head (``signed.HEAD_FIELDS``)
_SIGNATURE_KEY = b"\x03sig"  # a head's "sig" key, encoded (its length, then its UTF-8)
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's: Yjs client ids are JS numbers, yrs turns integers into f64
MAX_CLIENT = MAX_SAFE_INTEGER

# Struct kinds: the content refs of Item.js contentRefs, plus GC (0) and Skip (10).
GC, DELETED, JSON, BINARY, STRING, EMBED, FORMAT, TYPE, ANY, DOC, SKIP = range(11)
# Type refs of ContentType.js typeRefs that Yjs and yrs read alike.
ARRAY, MAP, TEXT, XML_ELEMENT, XML_FRAGMENT, XML_HOOK, XML_TEXT = range(7)
_PLAIN_TYPES = frozenset((ARRAY, MAP, TEXT, XML_FRAGMENT, XML_TEXT))

ID: TypeAlias = tuple[int, int]
"""A struct id: (client, clock)."""


class UnsafeUpdate(SchemaError):
    """An update is malformed, exceeds a limit, or does not fit the conversation schema."""


@dataclass(frozen=True, slots=True)
class UpdateLimits:
    """Bounds on what one update may hold."""

    max_bytes: int = 256 * 2**20
    """Whole update; the sync engine's own frame limits are usually lower."""
    max_depth: int = 32
    """Nesting of Any arrays and maps inside one value (ours nest 2 deep)."""
    max_value_bytes: int = 512 * 1024
    """One encoded Any value (a message text may hold 64 Ki characters: 256 KiB of UTF-8)."""
    max_key_bytes: int = 1024
    """Root names, map keys and other names outside Any values."""


DEFAULT_LIMITS = UpdateLimits()


class Struct(NamedTuple):
    """One struct of an update, as written (nothing resolved against a document)."""

    client: int
    clock: int
    length: int
    kind: int
    """GC, SKIP or the item's content ref (DELETED, BINARY, STRING, ... ANY, DOC)."""
    origin: ID | None
    right_origin: ID | None
    parent: str | ID | None
    """A root type's name, the id of the parent type's item, or None when the item takes
    its parent from its origin or right origin (Yjs writes no parent then)."""
    parent_sub: str | None
    """The map key, for items written with their parent."""
    type_ref: int | None
    """For TYPE content: ARRAY, MAP, TEXT, ..."""


@dataclass(slots=True)
class DecodedUpdate:
    """The structs of an update by client (each client's in clock order), and its delete set."""

    clients: dict[int, list[Struct]] = field(default_factory=dict)
    delete_set: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """client -> (clock, length) ranges."""
    records: list[bytes] = field(default_factory=list)
    """The encoded Any maps of ``RECORD_ENTRIES`` entries (``decode_any`` reads them):
    where signed heads may be, whatever their place (an item hung on another names none)."""


def decode_update(update: bytes, limits: UpdateLimits = DEFAULT_LIMITS) -> DecodedUpdate:
    """Decode a Yjs v1 update, or raise ``UnsafeUpdate`` saying what is wrong with it."""
    return _run(_decoder(update, limits))


def _decoder(update: bytes, limits: UpdateLimits) -> _Decoder:
    if not isinstance(update, bytes):
        raise UnsafeUpdate(f"an update is bytes, not {type(update).__name__}")
    if len(update) > limits.max_bytes:
        raise UnsafeUpdate(f"update of {len(update)} bytes exceeds the limit of {limits.max_bytes}")
    return _Decoder(update, limits)


def _run(decoder: _Decoder) -> DecodedUpdate:
    try:
        return decoder.update()
    except IndexError:
        raise UnsafeUpdate("update ends in the middle of a value") from None
    except UnicodeDecodeError as exc:
        raise UnsafeUpdate(f"string is not valid UTF-8 ({exc.reason})") from None


def decode_with_offsets(
    update: bytes, limits: UpdateLimits = DEFAULT_LIMITS
) -> tuple[DecodedUpdate, dict[int, list[int]], int]:
    """``decode_update``, and where things are in ``update``: per client, the offset of each
    struct and then of the section's end; and the offset of the delete set. Structs of a v1
    update are self-contained (ids are absolute), so these bytes can be cut and rejoined."""
    decoder = _decoder(update, limits)
    decoder.offsets = {}
    decoded = _run(decoder)
    return decoded, decoder.offsets, decoder.delete_set_at


def _varuint_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a lib0 varuint (decoding.js readVarUint) whose first byte had the high bit."""
    byte = data[pos]
    pos += 1
    value = (first & 0x7F) | (byte & 0x7F) << 7
    if byte < 0x80:
        return value, pos
    shift = 14
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift == 70:
            raise UnsafeUpdate("varint longer than 10 bytes")


def _varint(data: bytes, pos: int) -> int:
    """Skip a lib0 signed varint (see ``_read_varint``)."""
    if data[pos] < 0x80:
        return pos + 1  # one byte: the usual case, without a call
    return _read_varint(data, pos)[1]


class _Decoder:
    """One pass over one update; methods return the position after what they read."""

    def __init__(self, data: bytes, limits: UpdateLimits) -> None:
        self.data = data
        self.limits = limits
        self.own = b""
        self.records: list[bytes] = []
        # Per client, where each of its structs starts and (last) where the section ends:
        # recorded only for ``decode_with_offsets``, to cut an update between structs.
        self.offsets: dict[int, list[int]] | None = None
        self.delete_set_at = 0

    def update(self) -> DecodedUpdate:
        data = self.data
        decoded = DecodedUpdate(records=self.records)
        count, pos = self.count(0, 5)  # a client section: 3 varuints and a struct of 2 bytes or more
        for _ in range(count):
            pos = self.client_structs(pos, decoded.clients)
        self.delete_set_at = pos
        count, pos = self.count(pos, 4)  # a client of the delete set: 2 varuints and a range
        for _ in range(count):
            client, pos = self.client_id(pos)
            if client in decoded.delete_set:
                raise UnsafeUpdate(f"client {client} appears twice in the delete set")
            ranges: list[tuple[int, int]] = []
            decoded.delete_set[client] = ranges
            number, pos = self.count(pos, 2, at_least=1)
            for _ in range(number):
                clock, pos = self.clock(pos)
                length, pos = self.clock(pos)
                if length == 0 or clock + length > MAX_CLOCK:
                    raise UnsafeUpdate(f"deleted range {clock}+{length} of client {client} is empty or past 2**31")
                ranges.append((clock, length))
        if pos != len(data):
            raise UnsafeUpdate(f"{len(data) - pos} bytes after the delete set")
        return decoded

    def count(self, pos: int, min_bytes: int, at_least: int = 0) -> tuple[int, int]:
        """A count of things that take ``min_bytes`` each: never more than the bytes left allow."""
        value = self.data[pos]
        pos += 1
        if value >= 0x80:
            value, pos = _varuint_tail(self.data, pos, value)
        if value < at_least:
            raise UnsafeUpdate(f"count {value} where at least {at_least} is needed")
        if value * min_bytes > len(self.data) - pos:
            raise UnsafeUpdate(f"count {value} does not fit the {len(self.data) - pos} bytes left")
        return value, pos

    def clock(self, pos: int) -> tuple[int, int]:
        value = self.data[pos]
        pos += 1
        if value >= 0x80:
            value, pos = _varuint_tail(self.data, pos, value)
            if value > MAX_CLOCK:
                raise UnsafeUpdate(f"clock or length {value} beyond 2**31")
        return value, pos

    def client_id(self, pos: int) -> tuple[int, int]:
        value = self.data[pos]
        pos += 1
        if value >= 0x80:
            value, pos = _varuint_tail(self.data, pos, value)
            if value > MAX_CLIENT:
                raise UnsafeUpdate(f"client id {value} beyond 2**53")
        return value, pos

    def string(self, pos: int, limit: int) -> tuple[str, int]:
        data = self.data
        size = data[pos]
        pos += 1
        if size >= 0x80:
            size, pos = _varuint_tail(data, pos, size)
        end = pos + size
        if size > limit or end > len(data):
            raise UnsafeUpdate(f"string of {size} bytes is too long or runs past the end")
        return data[pos:end].decode(), end

    def client_structs(self, pos: int, clients: dict[int, list[Struct]]) -> int:
        """One client's section of the struct list (encoding.js readClientsStructRefs)."""
        count, pos = self.count(pos, 2, at_least=1)  # a struct is at least 2 bytes
        start = pos
        client, pos = self.client_id(pos)
        # Most origins name the section's own client: ``anchor`` matches these raw bytes.
        self.own = self.data[start:pos]
        clock, pos = self.clock(pos)
        if client in clients:
            raise UnsafeUpdate(f"client {client} has two struct sections")
        structs: list[Struct] = []
        clients[client] = structs
        data = self.data
        new = tuple.__new__
        offsets = None if self.offsets is None else self.offsets.setdefault(client, [])
        for _ in range(count):
            if offsets is not None:
                offsets.append(pos)
            info = data[pos]
            pos += 1
            if info == GC or info == SKIP:
                length, pos = self.clock(pos)
                struct = new(Struct, (client, clock, length, info, None, None, None, None, None))
            else:
                struct, pos = self.item(pos, info, client, clock)
                length = struct.length
            if length == 0:
                raise UnsafeUpdate(f"empty struct at {client}:{clock}")
            if clock + length > MAX_CLOCK:
                raise UnsafeUpdate(f"struct {client}:{clock} of length {length} ends past 2**31")
            structs.append(struct)
            clock += length
        if offsets is not None:
            offsets.append(pos)
        return pos

    def item(self, pos: int, info: int, client: int, clock: int) -> tuple[Struct, int]:
        """An Item (Item.js readItem / yrs Update::decode_block)."""
        kind = info & 0x1F
        if not DELETED <= kind <= DOC or kind == JSON:
            raise UnsafeUpdate(f"struct info {info:#x}: unknown or ambiguous content")
        origin: ID | None = None
        right_origin: ID | None = None
        parent: str | ID | None = None
        parent_sub: str | None = None
        data = self.data
        if info & 0x80:
            # Inline for the usual origin, the same client's earlier item (as in ``anchor``).
            own = self.own
            if data.startswith(own, pos):
                pos += len(own)
                at = data[pos]
                pos += 1
                if at >= 0x80:
                    at, pos = _varuint_tail(data, pos, at)
                if at >= clock:
                    raise UnsafeUpdate(f"item {client}:{clock} refers to its own client's later clock {at}")
                origin = (client, at)
            else:
                origin, pos = self.anchor(pos, client, clock)
        if info & 0x40:
            right_origin, pos = self.anchor(pos, client, clock)
        if not info & 0xC0:
            is_root = data[pos]
            pos += 1
            if is_root == 1:
                parent, pos = self.string(pos, self.limits.max_key_bytes)
            elif is_root == 0:
                parent, pos = self.anchor(pos, client, clock)
            else:
                raise UnsafeUpdate(f"parent info {is_root} is neither 0 nor 1")
            if info & 0x20:
                parent_sub, pos = self.string(pos, self.limits.max_key_bytes)
        length = 1
        type_ref = None
        if kind == ANY:
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varuint_tail(data, pos, length)
            if length > len(data) - pos:  # each value is at least one byte
                raise UnsafeUpdate(f"{length} Any values in {len(data) - pos} bytes")
            pos = _any_values(data, pos, length, self.limits, self.records)
        elif kind == DELETED:
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varuint_tail(data, pos, length)
        elif kind == TYPE:
            type_ref = data[pos]  # Yjs reads a varuint, yrs a byte: the same below 128
            pos += 1
            if type_ref == XML_ELEMENT:
                _, pos = self.string(pos, self.limits.max_key_bytes)
            elif type_ref not in _PLAIN_TYPES:
                raise UnsafeUpdate(f"type ref {type_ref} is unsupported or read differently by Yjs and yrs")
        elif kind == STRING:
            text, pos = self.string(pos, self.limits.max_value_bytes)
            length = len(text.encode("utf-16-le")) // 2  # clocks count UTF-16 code units
        elif kind == BINARY:
            size, pos = self.count(pos, 1)
            pos += size
        elif kind == FORMAT:
            _, pos = self.string(pos, self.limits.max_key_bytes)
            _, pos = self.string(pos, self.limits.max_value_bytes)
        elif kind == EMBED:
            _, pos = self.string(pos, self.limits.max_value_bytes)
        else:  # DOC: guid, then an Any of options (ContentDoc.js readContentDoc)
            _, pos = self.string(pos, self.limits.max_key_bytes)
            pos = _any_values(data, pos, 1, self.limits)
        struct = tuple.__new__(
            Struct, (client, clock, length, kind, origin, right_origin, parent, parent_sub, type_ref)
        )
        return struct, pos

    def anchor(self, pos: int, client: int, clock: int) -> tuple[ID, int]:
        """An origin, right origin or parent id: an item of the same client must come before."""
        data = self.data
        if data.startswith(self.own, pos):
            anchor_client = client
            pos += len(self.own)
        else:
            anchor_client, pos = self.client_id(pos)
        anchor_clock = data[pos]
        pos += 1
        if anchor_clock >= 0x80:
            anchor_clock, pos = _varuint_tail(data, pos, anchor_clock)
            if anchor_clock > MAX_CLOCK:
                raise UnsafeUpdate(f"clock {anchor_clock} beyond 2**31")
        if anchor_client == client and anchor_clock >= clock:
            raise UnsafeUpdate(f"item {client}:{clock} refers to its own client's later clock {anchor_clock}")
        return (anchor_client, anchor_clock), pos


def _any_values(data: bytes, pos: int, count: int, limits: UpdateLimits, records: list[bytes] | None = None) -> int:
    """Skip ``count`` lib0 Any values (decoding.js readAny), each bounded in size and depth;
    keep in ``records`` those that are maps of ``RECORD_ENTRIES`` entries.

    This is the hot loop of a large sync (every entry is an Any value), so it reads without
    recursion or helper calls: the innermost open container is kept in ``left``/``in_map``
    and the outer ones on ``outer``. Map keys are untagged strings, read inline.
    """
    end = len(data)
    max_depth = limits.max_depth
    max_value = limits.max_value_bytes
    for _ in range(count):
        start = pos
        outer: list[tuple[int, bool]] = []
        left = 0  # values still to read in the innermost open container (0: top level)
        in_map = False
        while True:
            tag = data[pos]
            pos += 1
            if tag == 119:  # string
                size = data[pos]
                pos += 1
                if size >= 0x80:
                    size, pos = _varuint_tail(data, pos, size)
                data[pos : pos + size].decode()
                pos += size
            elif tag == 118 or tag == 117:  # map, array
                size = data[pos]
                pos += 1
                if size >= 0x80:
                    size, pos = _varuint_tail(data, pos, size)
                if size:
                    if size > end - pos:
                        raise UnsafeUpdate(f"Any container of {size} entries in {end - pos} bytes")
                    if len(outer) == max_depth:
                        raise UnsafeUpdate(f"Any values nested deeper than {max_depth}")
                    outer.append((left, in_map))
                    left = size
                    in_map = tag == 118
                    if in_map:
                        size = data[pos]
                        pos += 1
                        if size >= 0x80:
                            size, pos = _varuint_tail(data, pos, size)
                        if size != 1 or data[pos] >= 0x80:
                            data[pos : pos + size].decode()
                        pos += size
                    continue
            elif tag == 125:  # varint
                pos = _varint(data, pos)
            elif tag == 123 or tag == 122:  # float64, bigint64
                pos += 8
            elif tag == 124:  # float32
                pos += 4
            elif tag == 116:  # bytes
                size = data[pos]
                pos += 1
                if size >= 0x80:
                    size, pos = _varuint_tail(data, pos, size)
                pos += size
            elif tag < 120 or tag > 127:  # 120, 121, 126 and 127 carry no payload
                raise UnsafeUpdate(f"unknown Any tag {tag}")
            # A value is complete: go on to the next one of its container, or close it.
            while outer:
                left -= 1
                if left:
                    if in_map:
                        size = data[pos]
                        pos += 1
                        if size >= 0x80:
                            size, pos = _varuint_tail(data, pos, size)
                        if size != 1 or data[pos] >= 0x80:  # one ASCII letter is valid UTF-8
                            data[pos : pos + size].decode()
                        pos += size
                    break
                left, in_map = outer.pop()
            else:
                break
        # Strings and numbers skip ahead without reading: an overrun shows here.
        if pos > end:
            raise UnsafeUpdate("update ends in the middle of an Any value")
        if pos - start > max_value:
            raise UnsafeUpdate(f"Any value of {pos - start} bytes exceeds {max_value}")
        if records is not None and data[start] == 118 and data[start + 1] == RECORD_ENTRIES:
            value = data[start:pos]
            if _SIGNATURE_KEY in value:  # a stream entry has as many fields, but no signature
                records.append(value)
    return pos


def decode_any(data: bytes) -> object:
    """A lib0 Any value that ``_any_values`` checked already, as Python values."""
    value, _ = _read_any(data, 0)
    return value


def _read_any(data: bytes, pos: int) -> tuple[object, int]:
    tag = data[pos]
    pos += 1
    if tag == 119:
        size, pos = _varuint(data, pos)
        return data[pos : pos + size].decode(), pos + size
    if tag == 118:
        size, pos = _varuint(data, pos)
        entries: dict[str, object] = {}
        for _ in range(size):
            length, pos = _varuint(data, pos)
            key = data[pos : pos + length].decode()
            entries[key], pos = _read_any(data, pos + length)
        return entries, pos
    if tag == 117:
        size, pos = _varuint(data, pos)
        items: list[object] = []
        for _ in range(size):
            item, pos = _read_any(data, pos)
            items.append(item)
        return items, pos
    if tag == 125:
        return _read_varint(data, pos)
    if tag == 123:
        return unpack(">d", data[pos : pos + 8])[0], pos + 8
    if tag == 124:
        return unpack(">f", data[pos : pos + 4])[0], pos + 4
    if tag == 122:
        return int.from_bytes(data[pos : pos + 8], "big", signed=True), pos + 8
    if tag == 116:
        size, pos = _varuint(data, pos)
        return data[pos : pos + size], pos + size
    return {121: False, 120: True, 126: None, 127: None}[tag], pos


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """The lib0 varuint at ``pos`` in ``data``, and where it ends; ``IndexError`` past the
    end, ``UnsafeUpdate`` if longer than 10 bytes."""
    return _varuint(data, pos)


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    return (first, pos + 1) if first < 0x80 else _varuint_tail(data, pos + 1, first)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 signed varint (decoding.js readVarInt: sign in bit 6 of the first byte, 6 bits
    of value there), at most 10 bytes long and within 2**53 like every JavaScript integer."""
    byte = data[pos]
    pos += 1
    negative, value, shift = byte & 0x40, byte & 0x3F, 6
    while byte >= 0x80:
        if shift > 62:
            raise UnsafeUpdate("varint longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    if value > MAX_SAFE_INTEGER:
        raise UnsafeUpdate("integer beyond 2**53")
    return (-value if negative else value), pos


def client_clock(state_vector: bytes, client: int) -> int:
    """``client``'s clock in a state vector pycrdt made (0 if it names none)."""
    return clocks_of(state_vector).get(client, 0)


def clocks_of(state_vector: bytes) -> dict[int, int]:
    """A state vector pycrdt made (or a codec checked) as ``{client id: clock}``."""
    count, pos = _varuint(state_vector, 0)
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = _varuint(state_vector, pos)
        clocks[client], pos = _varuint(state_vector, pos)
    return clocks
