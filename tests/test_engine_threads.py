"""scoring.network.network_threads: a light model leaves one CPU core to decoding while a folder is scored."""

from __future__ import annotations

import torch

from haaqicli.models.haaqinet import HAAQINet
from haaqicli.models.student import StudentNet
from haaqicli.scoring.network import network_threads


class _Light(torch.nn.Module):
    LEAVES_CORE_FOR_DECODING = True


def test_light_model_leaves_a_core_and_restores() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with network_threads(_Light(), torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with network_threads(torch.nn.Linear(2, 2), torch.device("cpu")):  # not light: all threads
            assert torch.get_num_threads() == 2
        with network_threads(_Light(), torch.device("cuda")):  # the CPU is not the network's there
            assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        with network_threads(_Light(), torch.device("cpu")):  # never below one thread
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_restored_after_an_interrupt() -> None:
    torch.set_num_threads(2)
    try:
        with network_threads(_Light(), torch.device("cpu")):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert torch.get_num_threads() == 2


def test_which_architectures_are_light() -> None:
    assert StudentNet.LEAVES_CORE_FOR_DECODING is True
    assert HAAQINet.LEAVES_CORE_FOR_DECODING is False
