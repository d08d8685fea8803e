"""Labeling configs: which tags are needed, how prompt labels map to brush labels."""

import pytest
from labelstudio_support import SAM_CONFIG, SINGLE_LABEL_CONFIG

from label_studio_backend.labelconfig import LabelConfigError, parse_label_config


def test_usual_interactive_sam_config():
    cfg = parse_label_config(SAM_CONFIG)
    assert (cfg.image_name, cfg.image_key, cfg.brush_name) == ("image", "image", "tag")
    assert cfg.brush_labels == ("Cell", "Membrane")
    assert {n: (p.kind, p.smart) for n, p in cfg.prompts.items()} == {
        "tag2": ("point", True),
        "tag3": ("box", True),
    }
    assert cfg.brush_label_for("Membrane", from_name="tag2") == "Membrane"
    with pytest.raises(LabelConfigError, match="Nucleus"):
        cfg.brush_label_for("Nucleus", from_name="tag2")
    with pytest.raises(LabelConfigError, match="no label"):
        cfg.brush_label_for(None, from_name="tag2")


def test_single_brush_label_takes_every_prompt_label():
    cfg = parse_label_config(SINGLE_LABEL_CONFIG)
    assert cfg.image_key == "url" and cfg.brush_name == "mask"
    assert cfg.brush_label_for("Detected", from_name="det") == "Object"
    assert cfg.brush_label_for(None, from_name="click") == "Object"
    assert not cfg.prompts["det"].smart  # non-smart boxes still feed batch mode


def test_prompts_on_another_image_are_ignored():
    cfg = parse_label_config(
        """<View><Image name="a" value="$a"/><Image name="b" value="$b"/>
        <BrushLabels name="m" toName="a"><Label value="X"/></BrushLabels>
        <KeyPoint name="k" toName="a" smart="true"/>
        <RectangleLabels name="r" toName="b"><Label value="X"/></RectangleLabels></View>"""
    )
    assert cfg.image_name == "a" and set(cfg.prompts) == {"k"}


@pytest.mark.parametrize(
    "xml, needle",
    [
        ("", "no labeling config"),
        ("<View><Image name='i' value='$x'", "cannot parse"),
        ("<View><Text name='t' value='$x'/></View>", "<Image>"),
        ("<View><Image name='i' value='$x'/><KeyPointLabels name='k' toName='i'>"
         "<Label value='a'/></KeyPointLabels></View>", "<BrushLabels>"),
        ("<View><Image name='i' value='$x'/><Image name='j' value='$y'/><BrushLabels name='b' "
         "toName='j'><Label value='a'/></BrushLabels><KeyPoint name='k' toName='i'/></View>",
         "KeyPointLabels"),
        ("<View><Image name='i' value='$x'/><BrushLabels name='b' toName='i'>"
         "</BrushLabels><KeyPoint name='k' toName='i'/></View>", "no <Label>"),
    ],
)
def test_unusable_configs_say_what_is_missing(xml, needle):
    with pytest.raises(LabelConfigError) as e:
        parse_label_config(xml)
    assert needle in e.value.message
    assert e.value.status_code == 422
