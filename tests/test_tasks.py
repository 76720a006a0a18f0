"""The task records: what differs between tasks is a field, read instead of comparing strings."""

from sever.tasks import CLASSIFICATION, DETECTION, SEGMENTATION, task_of


def test_only_segmentation_runs_predict_pixel_maps():
    assert [task.pixel_maps for task in (SEGMENTATION, CLASSIFICATION, DETECTION)] == [True, False, False]
    assert task_of({}).pixel_maps  # a checkpoint's config without task is segmentation's

