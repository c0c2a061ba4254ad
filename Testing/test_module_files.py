"""Static checks of the Slicer module files: what Slicer would trip over at load or build time,
checked without a Slicer application."""

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["XAIExplain", "XAIRobustness"]
# Top-level imports a module file may make: Slicer's Python environment only (the engine needs torch,
# which is installed on first use).
ALLOWED_TOP_LEVEL_IMPORTS = {
    "ctk", "qt", "vtk", "slicer", "XAIExplain",
    "enum", "functools", "json", "logging", "os", "queue", "re", "shutil", "subprocess", "sys", "tempfile", "threading",
    "typing", "unittest", "dataclasses", "pathlib",
}
# Engine modules a module file may import at load time: standard library only (checked below).
LIGHT_ENGINE_MODULES = {"XAIExplainLib.resources", "XAIExplainLib.background", "XAIExplainLib.bundle_card"}
# Widget classes the parameter node wrapper can connect, per field type.
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox"},
    "enum": {"QComboBox"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
}


def _moduleSource(module):
    return (ROOT / module / f"{module}.py").read_text(encoding="utf-8")


def _uiTree(module):
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")


def _uiWidgets(module):
    return {w.get("name"): w for w in _uiTree(module).iter("widget")}


def _parameterFields(module):
    """Field name -> kind ("node", "enum", "float", ...) of the @parameterNodeWrapper class."""
    tree = ast.parse(_moduleSource(module))
    enums = {node.name for node in tree.body if isinstance(node, ast.ClassDef)
             and any(getattr(base, "attr", getattr(base, "id", "")) == "Enum" for base in node.bases)}
    importedEnums = {alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                     for alias in node.names if alias.name in {"ExplanationMethod", "ClinicalTask", "Audience",
                                                                 "UncertaintyMethod"}}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            fields = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign):
                    annotation = ast.unparse(statement.annotation)
                    base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", annotation)
                    # A node field may also be Optional / a Union of node classes.
                    members = re.findall(r"\w+", re.sub(r"^Optional\[(.*)\]$", r"\1", base))
                    if base.startswith("vtkMRML") or members and all(
                            m.startswith("vtkMRML") for m in members if m not in ("Union", "None")):
                        kind = "node"
                    elif base in enums or base in importedEnums:
                        kind = "enum"
                    else:
                        kind = base
                    fields[statement.target.id] = kind
            return fields
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


def _cmakeList(module, variable):
    text = (ROOT / module / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{module}/CMakeLists.txt does not set {variable}"
    listed = {line.strip().replace("${MODULE_NAME}", module) for line in match.group(1).split() if line.strip()}
    # A list made by file(GLOB_RECURSE <var> RELATIVE ... <folder>/*) stands for every file under the folder.
    for glob, folder in re.findall(r"file\(GLOB_RECURSE\s+(\w+)\s+RELATIVE.*?/([\w/]+)/\*\)", text, re.S):
        if "${%s}" % glob in listed:
            listed.discard("${%s}" % glob)
            listed |= {p.relative_to(ROOT / module).as_posix() for p in (ROOT / module / folder).rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts}
    return listed


def _pngSize(path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("module", MODULES)
def test_ui_parses_and_is_a_qmrml_widget(module):
    root = _uiTree(module).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_used_in_code_exist(module):
    used = set(re.findall(r"self\.ui\.(\w+)", _moduleSource(module)))
    assert used, "the widget uses no .ui widgets?"
    missing = used - set(_uiWidgets(module))
    assert not missing, f"{module}.py uses widgets missing from {module}.ui: {sorted(missing)}"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_match_fields_and_widget_types(module):
    fields = _parameterFields(module)
    bound = {}
    for name, element in _uiWidgets(module).items():
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[name] = (prop.find("string").text, element.get("class"))
    assert bound, f"{module}.ui binds no widget to the parameter node"
    for widgetName, (parameter, widgetClass) in bound.items():
        assert parameter in fields, f"{widgetName} binds unknown parameter {parameter!r}"
        assert widgetClass in CONNECTABLE[fields[parameter]], (
            f"{widgetName} ({widgetClass}) cannot be connected to {parameter} ({fields[parameter]})")
    assert len({p for p, _ in bound.values()}) == len(bound), "a parameter is bound to two widgets"


@pytest.mark.parametrize("module", MODULES)
def test_mrml_widgets_get_the_scene(module):
    root = _uiTree(module).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrmlWidgets = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")} - {module}
    assert mrmlWidgets <= receivers, f"not connected to mrmlSceneChanged: {sorted(mrmlWidgets - receivers)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_file_is_listed_in_cmakelists(module):
    moduleDir = ROOT / module
    scripts = _cmakeList(module, "MODULE_PYTHON_SCRIPTS")
    resources = _cmakeList(module, "MODULE_PYTHON_RESOURCES")
    onDisk = {p.relative_to(moduleDir).as_posix() for p in moduleDir.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != "CMakeLists.txt"}
    pythonFiles = {p for p in onDisk if p.endswith(".py")}
    assert pythonFiles - scripts == set(), f"Python files missing from {module}/CMakeLists.txt"
    assert (onDisk - pythonFiles) - resources == set(), f"resource files missing from {module}/CMakeLists.txt"
    listed = scripts | resources
    assert {p for p in listed if not (moduleDir / p).is_file()} == set(), "CMakeLists.txt lists files that do not exist"
    text = (moduleDir / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest" in text


def test_extension_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), f"{key} is not set"
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Explainability"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


def test_icons():
    assert _pngSize(ROOT / "XAIExtension.png") == (128, 128)
    for module in MODULES:
        width, height = _pngSize(ROOT / module / "Resources" / "Icons" / f"{module}.png")
        # Slicer scales module icons down for menus and toolbars; square and at most 128 px is its convention.
        assert width == height and 16 <= width <= 128


@pytest.mark.parametrize("module", MODULES)
def test_module_structure_and_light_imports(module):
    tree = ast.parse(_moduleSource(module))
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        if isinstance(node, ast.ImportFrom) and node.module == "XAIExplainLib":
            names = [f"XAIExplainLib.{alias.name}" for alias in node.names]
        for name in names:
            assert name.split(".")[0] in ALLOWED_TOP_LEVEL_IMPORTS or name in LIGHT_ENGINE_MODULES, \
                f"{module}.py imports {name} at load time"
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: {ast.unparse(b) for b in node.bases} for name, node in classes.items()}
    assert "ScriptedLoadableModule" in bases[module]
    assert "ScriptedLoadableModuleWidget" in bases[f"{module}Widget"]
    assert "ScriptedLoadableModuleLogic" in bases[f"{module}Logic"]
    assert "ScriptedLoadableModuleTest" in bases[f"{module}Test"]
    assert "runTest" in {f.name for f in classes[f"{module}Test"].body if isinstance(f, ast.FunctionDef)}
    source = _moduleSource(module)
    assert '"Explainability"' in source and "self.parent.helpText" in source and "self.parent.acknowledgementText" in source
    assert "from slicer.i18n import tr as _" in source
    assert "connectGui(self.ui)" in source and "tryWithErrorDisplay" in source
    assert 'self.resourcePath("UI/' + module + '.ui")' in source


def test_robustness_depends_on_explain():
    assert 'self.parent.dependencies = ["XAIExplain"]' in _moduleSource("XAIRobustness")


def test_self_tests_use_the_bundled_sample_and_model():
    from XAIExplainLib import resources

    source = _moduleSource("XAIExplain")
    model = re.search(r'^SAMPLE_MODEL_NAME = "([\w-]+)"$', source, re.M).group(1)
    assert "SAMPLE_CASE_PATH = str(resources.sample_case_path())" in source
    assert resources.sample_case_path().is_file()
    assert (resources.bundled_models_dir() / model / "configs" / "metadata.json").is_file()
