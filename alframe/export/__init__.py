"""Exports of labelled data to other tools (nnU-Net v2)."""

from alframe.export.nnunet import NnunetExport, export_nnunet

__all__ = ["NnunetExport", "export_nnunet"]
