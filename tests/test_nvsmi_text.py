"""nvidia-smi's text outputs (dmon, pmon, -q, -q -x) read as capture files, or refused with one line.

The corpus files are ``../shared/data/real-outputs`` (its README says where each comes from); the
expected GPUs and values were read off the files by hand, the line named beside each. The small
synthetic outputs below cover what the corpus lacks.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collectors.errors import MalformedCapture
from collectors.metrics import KIB, MIB
from collectors.nvsmi_text import (
    NVIDIA_SMI_DMON,
    NVIDIA_SMI_PMON,
    NVIDIA_SMI_QUERY,
    NVIDIA_SMI_QUERY_XML,
    detect,
    parse,
)
from collectors.schema import GPU, GPU_MODEL, TIMESTAMP
from collectors.textcapture import Clock, Parsed

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-outputs"
MODIFIED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)  # where the last sample of an untimed file sits


def corpus_file(name: str) -> Path:
    path = CORPUS / name
    if not path.is_file():
        pytest.fail(
            f"corpus file not found at {path}: CI keeps ../shared/data/real-outputs beside the repository"
        )
    return path


def read(path: Path, expected_format: str) -> Parsed:
    lines = path.read_text().splitlines()
    assert detect(path, lines) == expected_format
    return parse(path, lines, Clock(path, None, None, MODIFIED), expected_format)


def write(tmp_path: Path, text: str, name: str = "capture.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def value(parsed: Parsed, index: int, signal: str) -> float:
    found = parsed.rows[index].get(signal, math.nan)
    assert isinstance(found, float)
    return found


# --- the corpus ------------------------------------------------------------------------------------


def test_dmon_deepspeech_four_gpus_one_sample() -> None:
    parsed = read(corpus_file("nvsmi-dmon-DeepSpeech-178.txt"), NVIDIA_SMI_DMON)
    assert [row[GPU] for row in parsed.rows] == ["0", "1", "2", "3"]
    assert parsed.lines == [3, 4, 5, 6]
    # Line 3: gpu 0, pwr 111 W, sm 25 %, fb 11651 MB, rxpci 41 MB/s, txpci 8 MB/s.
    assert value(parsed, 0, "power_watts") == 111.0
    assert value(parsed, 0, "gpu_util_ratio") == pytest.approx(0.25)
    assert value(parsed, 0, "mem_used_bytes") == 11651 * MIB
    assert value(parsed, 0, "pcie_rx_bytes_per_second") == 41 * MIB
    assert value(parsed, 0, "pcie_tx_bytes_per_second") == 8 * MIB
    # Line 6: gpu 3, pwr 86 W, sm 18 %, fb 11660 MB.
    assert value(parsed, 3, "power_watts") == 86.0
    assert value(parsed, 3, "gpu_util_ratio") == pytest.approx(0.18)
    assert value(parsed, 3, "mem_used_bytes") == 11660 * MIB
    # One sample, no -o DT: placed at the file's modification time.
    assert {row[TIMESTAMP] for row in parsed.rows} == {MODIFIED}
    assert math.isnan(value(parsed, 0, "mem_total_bytes"))  # dmon prints no total: missing, never 0
    assert any("printed no date and time" in note for note in parsed.notes)


def test_dmon_telegraf_utilization_only_nine_idle_samples() -> None:
    parsed = read(corpus_file("nvsmi-dmon-telegraf-5532.txt"), NVIDIA_SMI_DMON)
    # Lines 3-11: gpu 0, sm 0, nine samples 1 s apart ending at the modification time.
    assert len(parsed.rows) == 9
    assert {row[GPU] for row in parsed.rows} == {"0"}
    assert all(value(parsed, i, "gpu_util_ratio") == 0.0 for i in range(9))
    assert all(math.isnan(value(parsed, i, "power_watts")) for i in range(9))
    times = [row[TIMESTAMP] for row in parsed.rows]
    assert times[-1] == MODIFIED
    assert times[0] == datetime(2026, 12, 1, 11, 59, 52, tzinfo=UTC)


def test_pmon_windows_processes_summed_per_sample() -> None:
    parsed = read(corpus_file("nvsmi-pmon-nvgpuexp-cap-win2080s.txt"), NVIDIA_SMI_PMON)
    # Five samples of GPU 0, starting where dwm.exe (pid 2056) comes round: lines 3, 15, 27, 39, 53.
    assert parsed.lines == [3, 15, 27, 39, 53]
    assert {row[GPU] for row in parsed.rows} == {"0"}
    # Lines 13-14: ffmpeg 25704 and 26660 at sm 3 each; lines 37-38: 7 and '-' (idle).
    utilization = [value(parsed, i, "gpu_util_ratio") for i in range(5)]
    assert utilization == pytest.approx([0.06, 0.06, 0.07, 0.07, 0.07])
    assert parsed.pids == {
        "0": {2056, 4680, 12332, 12444, 14160, 14184, 15076, 16280, 20372, 24804, 25704, 26660}
    }
    assert any("repeated header" in note for note in parsed.notes)  # lines 47-48


def test_query_h200_mig_holds_memory_only_and_is_refused() -> None:
    path = corpus_file("nvsmi-q-nvgpuexp-cap-h200mig.txt")
    # Line 9: GPU 00000000:83:00.0; MIG devices of GPU instances 2 (twice), 3, 9 with Shared FB Memory
    # Usage, and 10 cut before its memory; the 120 lines end before the GPU's Utilization section.
    with pytest.raises(MalformedCapture) as refused:
        read(path, NVIDIA_SMI_QUERY)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:9: nvidia-smi -q output holding memory of GPU(s) 0/2, 0/3, 0/9,")
    assert "no utilization or activity signal" in message
    assert "none per MIG device" in message


def test_query_gtx780_cut_short_holds_no_signal_and_is_refused() -> None:
    path = corpus_file("nvsmi-q-sysmon-12.txt")
    # Line 9: GPU 00000000:01:00.0 (GeForce GTX 780); the 32 lines end in Inforom Version.
    with pytest.raises(
        MalformedCapture,
        match=r"nvsmi-q-sysmon-12\.txt:9: nvidia-smi -q output holding no signal zest reads, no "
        r"utilization or activity signal \(no Utilization/Gpu in any GPU block: the output is cut short",
    ):
        read(path, NVIDIA_SMI_QUERY)


def test_query_xml_cut_short_is_refused_with_its_line() -> None:
    path = corpus_file("nvsmi-qx-telegraf-pr18690-rtx3080.xml")
    # 120 of 849 lines: the file ends inside <clocks_event_reasons_counters>.
    with pytest.raises(
        MalformedCapture,
        match=r"\.xml:120: nvidia-smi -q -x XML that ends at line 120 before its closing "
        r"</nvidia_smi_log> \(cut short\): save the output whole$",
    ):
        read(path, NVIDIA_SMI_QUERY_XML)


def test_other_formats_of_the_corpus_are_not_detected() -> None:
    for name in (
        "nvsmi-csv-gpustat-5.csv",
        "dcgmi-dmon-DCGM-151.txt",
        "dcgm-exporter-k8s-ai-conformance-kops-l4.prom",
        "promapi-k8s-ai-conformance-upcloud.json",
    ):
        path = corpus_file(name)
        assert detect(path, path.read_text().splitlines()) is None, name


# --- dmon ------------------------------------------------------------------------------------------

DMON_DT = """\
#Date       Time        gpu    pwr  gtemp  mtemp     sm    mem    enc    dec    jpg    ofa   mclk   pclk
#YYYYMMDD   HH:MM:SS    Idx      W      C      C      %      %      %      %      %      %    MHz    MHz
 20240115   10:41:35      0     69     34     41     98     45      0      0      0      0   2619   1980
 20240115   10:41:35      1     70     33      -     97     44      0      0      0      0   2619   1980
#Date       Time        gpu    pwr  gtemp  mtemp     sm    mem    enc    dec    jpg    ofa   mclk   pclk
#YYYYMMDD   HH:MM:SS    Idx      W      C      C      %      %      %      %      %      %    MHz    MHz
 20240115   10:41:36      0     71     34     41      -     45      0      0      0      0   2619   1980
"""


def test_dmon_with_date_and_time_and_a_repeated_header(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, DMON_DT), NVIDIA_SMI_DMON)
    assert [row[GPU] for row in parsed.rows] == ["0", "1", "0"]
    assert [row[TIMESTAMP] for row in parsed.rows] == [
        datetime(2024, 1, 15, 10, 41, 35, tzinfo=UTC),
        datetime(2024, 1, 15, 10, 41, 35, tzinfo=UTC),
        datetime(2024, 1, 15, 10, 41, 36, tzinfo=UTC),
    ]
    assert parsed.lines == [3, 4, 7]
    assert value(parsed, 1, "gpu_util_ratio") == pytest.approx(0.97)
    assert math.isnan(value(parsed, 2, "gpu_util_ratio"))  # '-': not supported, missing
    assert value(parsed, 2, "power_watts") == 71.0
    assert "timestamps assumed UTC" in " ".join(parsed.notes)
    assert "1 repeated header line(s) skipped" in parsed.notes


def test_dmon_repeated_header_without_times_splits_samples_where_a_gpu_repeats(tmp_path: Path) -> None:
    text = "# gpu    sm   mem\n# Idx     %     %\n    0    10     1\n    1    20     2\n" * 2
    parsed = read(write(tmp_path, text), NVIDIA_SMI_DMON)
    assert [row[GPU] for row in parsed.rows] == ["0", "1", "0", "1"]
    times = [row[TIMESTAMP] for row in parsed.rows]
    assert times[0] == times[1] != times[2] == times[3] == MODIFIED


def test_dmon_without_sm_is_refused_saying_what_it_holds(tmp_path: Path) -> None:
    text = "# gpu   pwr gtemp mtemp    fb\n# Idx     W     C     C    MB\n    0    60    40    45  1000\n"
    with pytest.raises(
        MalformedCapture,
        match=r"capture\.txt:1: nvidia-smi dmon output with columns pwr, gtemp, mtemp, fb holds memory and "
        r"power, no utilization or activity signal: record with -s u added",
    ):
        read(write(tmp_path, text), NVIDIA_SMI_DMON)


def test_dmon_garbage_cell_names_line_and_column(tmp_path: Path) -> None:
    text = "# gpu   pwr    sm\n# Idx     W     %\n    0    60    12\n    0    6O    12\n"
    with pytest.raises(MalformedCapture, match=r"capture\.txt:4: column pwr value '6O' is not a number"):
        read(write(tmp_path, text), NVIDIA_SMI_DMON)


def test_dmon_cut_row_and_unexpected_unit_are_refused(tmp_path: Path) -> None:
    cut = "# gpu   pwr    sm\n# Idx     W     %\n    0    60\n"
    with pytest.raises(MalformedCapture, match=r":3: 2 cells for the 3 columns of the header at line 1"):
        read(write(tmp_path, cut), NVIDIA_SMI_DMON)
    kilowatts = "# gpu   pwr    sm\n# Idx    kW     %\n    0    60    12\n"
    with pytest.raises(MalformedCapture, match=r":2: column pwr is in kW, expected W"):
        read(write(tmp_path, kilowatts), NVIDIA_SMI_DMON)


# --- pmon ------------------------------------------------------------------------------------------

PMON_TWO_PROCESSES = """\
# gpu         pid   type     sm    mem    enc    dec    jpg    ofa     fb   ccpm    command
# Idx           #    C/G      %      %      %      %      %      %     MB     MB    name
    0      11111     C     60     20      -      -      -      -   2048      0    python train.py
    0      22222     C     30     10      -      -      -      -   1024      0    python
    1          -     -      -      -      -      -      -      -      -      -    -
    0      11111     C     70     20      -      -      -      -   2048      0    python train.py
    0      22222     C     50      -      -      -      -      -   1024      0    python
    1          -     -      -      -      -      -      -      -      -      -    -
"""


def test_pmon_two_processes_on_one_gpu_are_summed(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, PMON_TWO_PROCESSES), NVIDIA_SMI_PMON)
    assert [row[GPU] for row in parsed.rows] == ["0", "1", "0", "1"]
    assert parsed.lines == [3, 5, 6, 8]
    assert value(parsed, 0, "gpu_util_ratio") == pytest.approx(0.90)  # 60 % + 30 %
    assert value(parsed, 2, "gpu_util_ratio") == 1.0  # 70 % + 50 %, clamped
    assert value(parsed, 0, "mem_used_bytes") == 3072 * MIB
    # GPU 1 shows no process, and never a value: it reports none, so missing rather than idle.
    assert math.isnan(value(parsed, 1, "gpu_util_ratio"))
    assert parsed.pids == {"0": {11111, 22222}, "1": set()}
    assert any("1 sample(s) clamped to 100 %" in note for note in parsed.notes)


def test_pmon_with_date_and_time(tmp_path: Path) -> None:
    text = (
        "#Date       Time        gpu        pid  type    sm   mem   enc   dec   command\n"
        "#YYYYMMDD   HH:MM:SS    Idx          #   C/G     %     %     %     %   name\n"
        " 20240115   10:41:35      0       4242     C    40     5     -     -   python\n"
        " 20240115   10:41:36      0       4242     C     -     -     -     -   python\n"
    )
    parsed = read(write(tmp_path, text), NVIDIA_SMI_PMON)
    assert [row[TIMESTAMP] for row in parsed.rows] == [
        datetime(2024, 1, 15, 10, 41, 35, tzinfo=UTC),
        datetime(2024, 1, 15, 10, 41, 36, tzinfo=UTC),
    ]
    assert [value(parsed, i, "gpu_util_ratio") for i in range(2)] == pytest.approx([0.40, 0.0])
    assert parsed.pids == {"0": {4242}}


def test_pmon_without_sm_is_refused(tmp_path: Path) -> None:
    text = (
        "# gpu     pid  type    fb   command\n"
        "# Idx       #   C/G    MB   name\n"
        "    0    4242     C  1000   python\n"
    )
    with pytest.raises(
        MalformedCapture, match=r":1: nvidia-smi pmon output holding memory of processes, no utilization"
    ):
        read(write(tmp_path, text), NVIDIA_SMI_PMON)


def test_pmon_garbage_pid_is_refused(tmp_path: Path) -> None:
    text = (
        "# gpu     pid  type    sm   command\n"
        "# Idx       #   C/G     %   name\n"
        "    0    42x2     C    10   python\n"
    )
    with pytest.raises(MalformedCapture, match=r":3: column pid value '42x2' is not a process id"):
        read(write(tmp_path, text), NVIDIA_SMI_PMON)


# --- -q text ---------------------------------------------------------------------------------------

QUERY_L40S = """
==============NVSMI LOG==============

Timestamp                                 : Mon Jan 15 10:41:35 2024
Driver Version                            : 550.54.15
CUDA Version                              : 12.4

Attached GPUs                             : 1
GPU 00000000:3B:00.0
    Product Name                          : NVIDIA L40S
    Display Mode                          : Requested functionality has been deprecated
    Minor Number                          : 0
    PCI
        Tx Throughput                     : 1000 KB/s
        Rx Throughput                     : [N/A]
    FB Memory Usage
        Total                             : 46068 MiB
        Reserved                          : 598 MiB
        Used                              : 30000 MiB
        Free                              : 15470 MiB
    BAR1 Memory Usage
        Total                             : 65536 MiB
        Used                              : 1 MiB
        Free                              : 65535 MiB
    Utilization
        Gpu                               : 87 %
        Memory                            : 40 %
    GPU Power Readings
        Power Draw                        : N/A
        Average Power Draw                : 300.12 W
        Instantaneous Power Draw          : 310.50 W
"""


def test_query_text_reads_utilization_memory_and_average_power(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, QUERY_L40S), NVIDIA_SMI_QUERY)
    assert len(parsed.rows) == 1
    row = parsed.rows[0]
    assert (row[GPU], row[GPU_MODEL], row[TIMESTAMP]) == (
        "0",
        "NVIDIA L40S",
        datetime(2024, 1, 15, 10, 41, 35, tzinfo=UTC),
    )
    assert value(parsed, 0, "gpu_util_ratio") == pytest.approx(0.87)
    assert value(parsed, 0, "mem_used_bytes") == 30000 * MIB  # not BAR1's Used
    assert value(parsed, 0, "mem_total_bytes") == 46068 * MIB
    assert value(parsed, 0, "power_watts") == 300.12  # Power Draw N/A: the average, as power.draw gives
    assert value(parsed, 0, "pcie_tx_bytes_per_second") == 1000 * KIB
    assert math.isnan(value(parsed, 0, "pcie_rx_bytes_per_second"))
    assert parsed.lines == [9]


def test_query_text_two_snapshots_without_timestamps_are_placed(tmp_path: Path) -> None:
    snapshot = "\n".join(line for line in QUERY_L40S.splitlines() if not line.startswith("Timestamp"))
    parsed = read(write(tmp_path, snapshot + "\n" + snapshot), NVIDIA_SMI_QUERY)
    assert [row[TIMESTAMP] for row in parsed.rows] == [
        datetime(2026, 12, 1, 11, 59, 59, tzinfo=UTC),
        MODIFIED,
    ]


def test_query_text_garbage_value_names_line_and_field(tmp_path: Path) -> None:
    text = QUERY_L40S.replace("Gpu                               : 87 %", "Gpu : eighty %")
    with pytest.raises(MalformedCapture, match=r":26: Utilization/Gpu value 'eighty %' is not a number"):
        read(write(tmp_path, text), NVIDIA_SMI_QUERY)


# --- -q -x XML -------------------------------------------------------------------------------------

QUERY_XML_MIG = """\
<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
\t<timestamp>Mon Jan 15 10:41:35 2024</timestamp>
\t<driver_version>535.104.05</driver_version>
\t<attached_gpus>2</attached_gpus>
\t<gpu id="00000000:07:00.0">
\t\t<product_name>NVIDIA A100-SXM4-40GB</product_name>
\t\t<mig_mode>
\t\t\t<current_mig>Enabled</current_mig>
\t\t\t<pending_mig>Enabled</pending_mig>
\t\t</mig_mode>
\t\t<mig_devices>
\t\t\t<mig_device>
\t\t\t\t<index>0</index>
\t\t\t\t<gpu_instance_id>1</gpu_instance_id>
\t\t\t\t<compute_instance_id>0</compute_instance_id>
\t\t\t\t<fb_memory_usage>
\t\t\t\t\t<total>19968 MiB</total>
\t\t\t\t\t<reserved>0 MiB</reserved>
\t\t\t\t\t<used>1234 MiB</used>
\t\t\t\t\t<free>18734 MiB</free>
\t\t\t\t</fb_memory_usage>
\t\t\t</mig_device>
\t\t</mig_devices>
\t\t<minor_number>0</minor_number>
\t\t<fb_memory_usage>
\t\t\t<total>40960 MiB</total>
\t\t\t<used>2000 MiB</used>
\t\t</fb_memory_usage>
\t\t<utilization>
\t\t\t<gpu_util>N/A</gpu_util>
\t\t\t<memory_util>N/A</memory_util>
\t\t</utilization>
\t\t<gpu_power_readings>
\t\t\t<power_draw>90.50 W</power_draw>
\t\t</gpu_power_readings>
\t</gpu>
\t<gpu id="00000000:0F:00.0">
\t\t<product_name>NVIDIA A100-SXM4-40GB</product_name>
\t\t<mig_devices>
\t\t\tNone
\t\t</mig_devices>
\t\t<minor_number>1</minor_number>
\t\t<fb_memory_usage>
\t\t\t<total>40960 MiB</total>
\t\t\t<used>10000 MiB</used>
\t\t</fb_memory_usage>
\t\t<utilization>
\t\t\t<gpu_util>45 %</gpu_util>
\t\t\t<memory_util>12 %</memory_util>
\t\t</utilization>
\t\t<power_readings>
\t\t\t<power_draw>250.25 W</power_draw>
\t\t</power_readings>
\t</gpu>
</nvidia_smi_log>
"""


def test_query_xml_with_a_mig_device(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, QUERY_XML_MIG, "log.xml"), NVIDIA_SMI_QUERY_XML)
    assert [row[GPU] for row in parsed.rows] == ["0", "0/1", "1"]
    assert parsed.lines == [7, 14, 39]
    assert {row[TIMESTAMP] for row in parsed.rows} == {datetime(2024, 1, 15, 10, 41, 35, tzinfo=UTC)}
    assert {row[GPU_MODEL] for row in parsed.rows} == {"NVIDIA A100-SXM4-40GB"}
    # GPU 0 in MIG mode: no utilization, its power and whole memory.
    assert math.isnan(value(parsed, 0, "gpu_util_ratio"))
    assert value(parsed, 0, "power_watts") == 90.5
    # The MIG device: its own memory only.
    assert value(parsed, 1, "mem_used_bytes") == 1234 * MIB
    assert value(parsed, 1, "mem_total_bytes") == 19968 * MIB
    assert math.isnan(value(parsed, 1, "power_watts"))
    # GPU 1: the old <power_readings>.
    assert value(parsed, 2, "gpu_util_ratio") == pytest.approx(0.45)
    assert value(parsed, 2, "mem_used_bytes") == 10000 * MIB
    assert value(parsed, 2, "power_watts") == 250.25


def test_query_xml_with_an_entity_declaration_is_refused(tmp_path: Path) -> None:
    text = QUERY_XML_MIG.replace(
        '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">',
        '<!DOCTYPE nvidia_smi_log [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    )
    with pytest.raises(MalformedCapture, match=r"log\.xml:2: an XML entity declaration"):
        read(write(tmp_path, text, "log.xml"), NVIDIA_SMI_QUERY_XML)


def test_query_xml_damaged_is_refused_with_its_line(tmp_path: Path) -> None:
    text = QUERY_XML_MIG.replace("<used>10000 MiB</used>", "<used>10000 MiB</usd>")
    with pytest.raises(MalformedCapture, match=r"log\.xml:47: nvidia-smi -q -x XML that is not well-formed"):
        read(write(tmp_path, text, "log.xml"), NVIDIA_SMI_QUERY_XML)


def test_query_xml_garbage_value_names_its_line(tmp_path: Path) -> None:
    text = QUERY_XML_MIG.replace("<gpu_util>45 %</gpu_util>", "<gpu_util>lots</gpu_util>")
    with pytest.raises(
        MalformedCapture, match=r"log\.xml:50: utilization/gpu_util value 'lots' is not a number"
    ):
        read(write(tmp_path, text, "log.xml"), NVIDIA_SMI_QUERY_XML)


def test_query_xml_looped_documents_are_snapshots(tmp_path: Path) -> None:
    later = QUERY_XML_MIG.replace("10:41:35", "10:41:40").replace("45 %", "55 %")
    parsed = read(write(tmp_path, QUERY_XML_MIG + later, "log.xml"), NVIDIA_SMI_QUERY_XML)
    assert [row[GPU] for row in parsed.rows] == ["0", "0/1", "1"] * 2
    assert parsed.lines[3] == 7 + QUERY_XML_MIG.count("\n")
    assert value(parsed, 5, "gpu_util_ratio") == pytest.approx(0.55)
    assert parsed.rows[5][TIMESTAMP] == datetime(2024, 1, 15, 10, 41, 40, tzinfo=UTC)


QUERY_MIG_TEXT = """\
Timestamp                                 : Mon Jan 15 10:41:35 2024
Attached GPUs                             : 2
GPU 00000000:0F:00.0
    Product Name                          : NVIDIA A100-SXM4-40GB
    MIG Devices
        MIG Device
            Index                         : 0
            GPU Instance ID               : 5
            Compute Instance ID           : 0
            FB Memory Usage
                Total                     : 9984 MiB
                Used                      : 3 MiB
                Free                      : 9981 MiB
            BAR1 Memory Usage
                Total                     : 8191 MiB
                Used                      : 0 MiB
    Minor Number                          : 3
    FB Memory Usage
        Total                             : 40960 MiB
        Used                              : 100 MiB
    Utilization
        Gpu                               : 0 %
"""


def test_query_text_of_one_selected_gpu_with_an_older_mig_block(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, QUERY_MIG_TEXT), NVIDIA_SMI_QUERY)
    # One of two attached GPUs shown (nvidia-smi -q -i): named by its minor number, not its place.
    assert [row[GPU] for row in parsed.rows] == ["3", "3/5"]
    assert parsed.lines == [3, 6]
    assert value(parsed, 0, "gpu_util_ratio") == 0.0
    assert value(parsed, 0, "mem_used_bytes") == 100 * MIB
    assert value(parsed, 1, "mem_used_bytes") == 3 * MIB  # not BAR1's
    assert value(parsed, 1, "mem_total_bytes") == 9984 * MIB
    assert any("minor number" in note for note in parsed.notes)
