# A stand-in for the Slicer CMake package, for Testing/test_slicer_install.py: what an extension's CMake
# lists get from find_package(Slicer) and include(${Slicer_USE_FILE}), reduced to what decides which files
# land where. Its slicerMacroBuildScriptedModule copies exactly what Slicer's does (Slicer's
# CMake/SlicerMacroBuildScriptedModule.cmake, which hands SCRIPTS and RESOURCES to CTK's
# ctkMacroCompilePythonScript): each listed file, at its path relative to the module's source folder, into
# <build>/lib/Slicer-X.Y/qt-scripted-modules, and that whole folder is what gets installed.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 10)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}.0")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/qt-scripted-modules")
# Extensions install below their own root (Slicer_INSTALL_ROOT is "./" for an extension build).
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
# Extension packaging (description file, CPack) decides nothing about the installed tree.
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/NoPackaging.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/NoPackaging.cmake")
