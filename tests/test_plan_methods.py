"""The plan's part in method and code questions: file bytes taken wherever the file is mapped,
and what the DAC reported counted only where nothing else covers it."""

from __future__ import annotations

from minidumper.model import DumpMode, Mapping, MemoryRange, RangeKind
from minidumper.plan import file_copies
from minidumper.plan.modes import clr_range_kind
from minidumper.plan.select import merge_by_priority

CORELIB = "/app/System.Private.CoreLib.dll"
# System.Private.CoreLib of a .NET 8 self-contained app, as /proc/PID/maps showed it: the whole
# file mapped flat (shared), then its sections where code runs (.text mapped from offset 0 at
# base + 0x10000, so that RVA 0x10200 is file offset 0x200).
MAPPINGS = [
    Mapping(0x7FACAA800000, 0x7FACAB432000, "r--s", 0x0, 5366136, CORELIB),
    Mapping(0x7FECD2C80000, 0x7FECD2C81000, "r--p", 0x0, 5366136, CORELIB),
    Mapping(0x7FECD2C90000, 0x7FECD35D0000, "r-xp", 0x0, 5366136, CORELIB),
    Mapping(0x7FECD35E0000, 0x7FECD38C5000, "rw-p", 0x940000, 5366136, CORELIB),
    Mapping(0x7FECD4000000, 0x7FECD4100000, "rw-p", 0x0, 0, ""),
]


def test_metadata_of_the_sections_is_taken_from_the_flat_mapping_too():
    # The metadata as the DAC reports it: in the .text mapping (RVA 0x6babf0, 0x28ebf0 bytes).
    metadata = MemoryRange(0x7FECD2C80000 + 0x6BA000, 0x7FECD2C80000 + 0x949000, RangeKind.MODULE_METADATA)
    copies = list(file_copies.elsewhere([metadata], MAPPINGS))
    # File offsets 0x6aa000..0x939000: in the flat mapping only (the header page holds offsets
    # up to 0x1000, the data section starts at 0x940000).
    assert copies == [MemoryRange(0x7FACAA800000 + 0x6AA000, 0x7FACAA800000 + 0x939000, RangeKind.MODULE_METADATA)]


def test_ranges_outside_files_have_no_copies():
    anonymous = MemoryRange(0x7FECD4000000, 0x7FECD4001000, RangeKind.DAC_ENUM)
    assert list(file_copies.elsewhere([anonymous], MAPPINGS)) == []


def test_what_the_dac_reported_counts_only_where_nothing_else_covers_it():
    ranges = [
        MemoryRange(0x1000, 0x3000, RangeKind.LOADER_HEAP),
        MemoryRange(0x2000, 0x5000, RangeKind.DAC_ENUM),
        MemoryRange(0x4000, 0x7000, RangeKind.DAC_READ),
    ]
    assert merge_by_priority(ranges) == [
        MemoryRange(0x1000, 0x3000, RangeKind.LOADER_HEAP),
        MemoryRange(0x3000, 0x5000, RangeKind.DAC_ENUM),
        MemoryRange(0x5000, 0x7000, RangeKind.DAC_READ),
    ]


def test_modes_take_the_new_kinds():
    assert clr_range_kind("DacEnumMemory", DumpMode.MINI) is RangeKind.DAC_ENUM
    assert clr_range_kind("DacEnumMemory", DumpMode.HEAP) is RangeKind.DAC_ENUM
    assert clr_range_kind("ReadyToRunSection", DumpMode.HEAP) is RangeKind.READY_TO_RUN
    assert clr_range_kind("ReadyToRunSection", DumpMode.MINI) is None
    assert clr_range_kind("DacReadOfLoadedMethods", DumpMode.HEAP) is RangeKind.DAC_READ
    assert clr_range_kind("DacReadOfLoadedMethods", DumpMode.MINI) is None
    assert clr_range_kind("DacEnumMemory", DumpMode.FULL) is None
