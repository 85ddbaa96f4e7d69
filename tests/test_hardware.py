"""What the machine can do: precision, autocast, the compiler check."""

import pytest
import torch

from imageclf.core.errors import ConfigError
from imageclf.core.hardware import resolve_precision


def test_compile_without_a_cpp_compiler_is_refused_early(monkeypatch: pytest.MonkeyPatch):
    import shutil

    from imageclf.core.hardware import check_compiler

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        check_compiler(torch.device("cpu"))
    check_compiler(torch.device("cuda"))  # GPUs compile with Triton: nothing to check here


def test_forced_bf16_without_native_support_warns(monkeypatch: pytest.MonkeyPatch, caplog):
    """auto never picks bf16 where it would run emulated; asked for by hand, it says so."""
    import imageclf.core.hardware as H

    monkeypatch.setattr(H, "native_bf16", lambda device: False)
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with caplog.at_level("WARNING", logger="imageclf.core.hardware"):
        assert resolve_precision("bf16", torch.device("cpu")).name == "bf16"
    assert "no native bf16" in caplog.text
    monkeypatch.setattr(H, "native_bf16", lambda device: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="imageclf.core.hardware"):
        assert resolve_precision("auto", torch.device("cpu")).name == "bf16"
        resolve_precision("bf16", torch.device("cpu"))
    assert "no native bf16" not in caplog.text


def test_an_isa_capped_below_bf16_counts_as_no_native_bf16():
    """ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY set to AVX2 make a newer CPU behave as an
    AVX2 one; auto precision must then choose what it would choose there (fp32)."""
    from imageclf.core.hardware import isa_capped_below_bf16

    assert not isa_capped_below_bf16({})
    assert isa_capped_below_bf16({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert isa_capped_below_bf16({"ONEDNN_MAX_CPU_ISA": "avx512_core"})
    assert isa_capped_below_bf16({"ATEN_CPU_CAPABILITY": "avx2"})
    assert not isa_capped_below_bf16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert not isa_capped_below_bf16({"ONEDNN_MAX_CPU_ISA": "ALL",
                                      "ATEN_CPU_CAPABILITY": "avx512"})



def test_fp16_trains_only_on_cuda_and_auto_never_predicts_in_it():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    p = resolve_precision("fp16", cpu, training=False)
    assert (p.name, p.scaler) == ("fp16", False)
    assert resolve_precision("auto", cpu, training=False).name in ("bf16", "fp32")
    with pytest.raises(ConfigError, match="--precision must be one of"):
        resolve_precision("int8", cpu)


def test_autocast_runs_matmuls_in_the_chosen_dtype():
    a = torch.rand(4, 4)
    with resolve_precision("fp32", torch.device("cpu")).autocast():
        assert (a @ a).dtype == torch.float32
    with resolve_precision("bf16", torch.device("cpu"), training=False).autocast():
        assert (a @ a).dtype == torch.bfloat16


def test_decoding_threads_leave_the_rest_of_the_process_its_thread_count():
    """The decoders run torch single-threaded; threads started afterwards, and this one,
    keep the process's count."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from imageclf.core.hardware import decoding_pool

    before = torch.get_num_threads()
    with decoding_pool(2) as pool:
        inside = {pool.submit(torch.get_num_threads).result() for _ in range(4)}

    def later() -> int:
        torch.ones(10**6).sum()  # a parallel op: the thread takes its count
        return torch.get_num_threads()

    with ThreadPoolExecutor(1) as other:
        assert other.submit(later).result() == before
    assert inside == {1} and torch.get_num_threads() == before
