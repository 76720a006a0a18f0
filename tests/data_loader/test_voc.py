"""Pascal VOC reading: layouts, coordinates, and errors that name the file and object."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from voc_data import CLASSES, make_voc, voc_xml

from sever.data_loader.voc import find_voc_folders, parse_voc, read_voc_folder
from sever.exceptions import DataError


def test_boxes_become_zero_based_pixel_edges(tmp_path):
    truth = make_voc(tmp_path)
    paths, boxes = read_voc_folder(tmp_path / "images", tmp_path / "annotations", CLASSES)
    assert [p.name for p in paths] == sorted(f"img{i}.png" for i in range(8))
    first = boxes[[p.name for p in paths].index("img1.png")]
    expected = [[x0 - 1, y0 - 1, x1, y1] for _, x0, y0, x1, y1 in truth[1]]
    assert first.boxes.dtype == np.float32 and first.boxes.tolist() == expected
    assert first.labels.tolist() == [0, 1] and first.size == (72, 72)


def test_whole_image_box_and_missing_size(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml("a.jpg", 200, 100, [("patches", 1, 1, 200, 100)]))
    assert parse_voc(path, CLASSES).boxes.tolist() == [[0, 0, 200, 100]]
    path.write_text(voc_xml("a.jpg", 0, 0, [("patches", 0, 0, 5, 5)], size=False))
    parsed = parse_voc(path, CLASSES)
    assert parsed.size is None and parsed.boxes.tolist() == [[0, 0, 5, 5]]


@pytest.mark.parametrize("layout", [("train_images", "train_annotations"), ("JPEGImages", "Annotations"),
                                    ("images", "annotations")])
def test_layouts_are_found(tmp_path, layout):
    make_voc(tmp_path, n=2, images=layout[0], annotations=layout[1])
    assert find_voc_folders(tmp_path) == (tmp_path / layout[0], tmp_path / layout[1])


def test_images_without_xml_are_defect_free(tmp_path):
    make_voc(tmp_path, n=3)
    (tmp_path / "annotations" / "img2.xml").unlink()
    _, boxes = read_voc_folder(tmp_path / "images", tmp_path / "annotations", CLASSES)
    assert [len(b) for b in boxes] == [1, 2, 0]


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object><name>patches</name>", r"a.xml: malformed XML: .*line 1"),
    ("<root/>", r"a.xml: root element is <root>"),
    (voc_xml("a", 50, 50, [("rust", 1, 1, 5, 5)]), r"a.xml: object 1 has class 'rust', which is not in class_names"),
    (voc_xml("a", 50, 50, [("patches", 1, 1, 5, 5), ("patches", 10, 10, 51, 20)]),
     r"a.xml: object 2 \(patches\): box xmin=10 ymin=10 xmax=51 ymax=20 lies outside the 50x50"),
    (voc_xml("a", 50, 50, [("patches", 5, 5, 3, 9)]), r"object 1 \(patches\): box .* is empty"),
    (voc_xml("a", 50, 50, [("patches", -2, 5, 3, 9)]), r"negative coordinate"),
    (voc_xml("a", 50, 50, [("patches", "a", 5, 3, 9)]), r"<xmin> is 'a', not a number"),
    ("<annotation><object><name>patches</name></object></annotation>", r"object 1 \(patches\): missing <bndbox>"),
    ("<annotation><object><bndbox/></object></annotation>", r"object 1: missing <name>"),
])
def test_malformed_annotations_name_file_and_object(tmp_path, xml, message):
    (tmp_path / "a.xml").write_text(xml)
    with pytest.raises(DataError, match=message):
        parse_voc(tmp_path / "a.xml", CLASSES)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no VOC layout found"):
        find_voc_folders(tmp_path)
    make_voc(tmp_path, n=2)
    (tmp_path / "annotations" / "ghost.xml").write_text(voc_xml("ghost", 10, 10, []))
    with pytest.raises(DataError, match=r"1 file\(s\) have no image .*ghost.xml"):
        read_voc_folder(tmp_path / "images", tmp_path / "annotations", CLASSES)
    with pytest.raises(DataError, match="folder not found"):
        find_voc_folders(tmp_path, "images", "labels")


def voc_objects(path, names):
    """``(labels, boxes)`` of a VOC file read with ElementTree: the boxes as zero-based pixel edges."""
    objects = ET.parse(path).getroot().iter("object")
    found = [(names.index(o.findtext("name")), [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
             for o in objects]
    return [label for label, _ in found], [[x0 - 1, y0 - 1, x1, y1] for _, (x0, y0, x1, y1) in found]


def test_neu_det_sample(shared_data):
    """Real NEU-DET: the boxes of a file read by hand, and a sample of every class against the XML's numbers."""
    names = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    source = shared_data / "neu-det" / "annotations"
    crazing = parse_voc(source / "crazing_10.xml", names)  # <bndbox> 60 20 194 69 and 9 84 197 198
    assert crazing.boxes.tolist() == [[59, 19, 194, 69], [8, 83, 197, 198]]
    assert crazing.labels.tolist() == [0, 0] and crazing.size == (200, 200)
    files = sorted(source.glob("*.xml"))[::40]
    assert len(files) == 41
    for path in files:
        parsed = parse_voc(path, names)
        labels, boxes = voc_objects(path, names)
        assert parsed.labels.tolist() == labels and parsed.boxes.tolist() == boxes, path.name
        assert parsed.size == (200, 200)
    assert {int(k) for path in files for k in parse_voc(path, names).labels} == set(range(6))
    assert find_voc_folders(shared_data / "neu-det") == (shared_data / "neu-det" / "images", source)
