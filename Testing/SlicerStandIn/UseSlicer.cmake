# Stand-in for Slicer's UseSlicer.cmake: the scripted-module macro and the Python test registration.

# Slicer's slicerMacroBuildScriptedModule (NAME, SCRIPTS, RESOURCES, WITH_GENERIC_TESTS, WITH_SUBDIR) with
# CTK's ctkMacroCompilePythonScript inlined: the same checks, the same copy targets, the same install rule.
# Byte-compiling the copied scripts (CTK's Compile<name>PythonFiles target) is left out: it adds .pyc files
# beside the .py files and changes nothing that is found or imported.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()
  foreach(var SCRIPTS RESOURCES)
    foreach(value ${MY_SLICER_${var}})
      if(NOT IS_ABSOLUTE ${value})
        set(value_absolute ${CMAKE_CURRENT_SOURCE_DIR}/${value})
      else()
        set(value_absolute ${value})
      endif()
      if(NOT EXISTS ${value_absolute} AND NOT EXISTS ${value_absolute}.py)
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${var}) given nonexistent file or directory '${value}'")
      endif()
    endforeach()
  endforeach()

  set(_destination_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_destination_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_destination_subdir "/${_destination_subdir}")
  endif()
  set(_destination "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_destination_subdir}")

  set(_copied_scripts)
  foreach(file ${MY_SLICER_SCRIPTS})
    get_filename_component(file_ext ${file} EXT)
    if(NOT "${file_ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    add_custom_command(DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${file}
      COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_CURRENT_SOURCE_DIR}/${file} ${_destination}/${file}
      OUTPUT ${_destination}/${file} COMMENT "Copying python Script: ${file}")
    list(APPEND _copied_scripts ${_destination}/${file})
  endforeach()
  add_custom_target(Copy${MY_SLICER_NAME}PythonScriptFiles ALL DEPENDS ${_copied_scripts})

  set(_copied_resources)
  foreach(file ${MY_SLICER_RESOURCES})
    add_custom_command(DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${file}
      COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_CURRENT_SOURCE_DIR}/${file} ${_destination}/${file}
      OUTPUT ${_destination}/${file} COMMENT "Copying python Resource: ${file}")
    list(APPEND _copied_resources ${_destination}/${file})
  endforeach()
  if(_copied_resources)
    add_custom_target(Copy${MY_SLICER_NAME}PythonResourceFiles ALL DEPENDS ${_copied_resources})
  endif()

  # CTK installs the whole build-tree folder (NO_INSTALL_SUBDIR unless WITH_SUBDIR: its content).
  set(_directory_to_install "${_destination}")
  if(NOT MY_SLICER_WITH_SUBDIR)
    set(_directory_to_install "${_destination}/")
  endif()
  install(DIRECTORY "${_directory_to_install}" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()

# Registers a module's self-test with ctest in Slicer; nothing to register without a Slicer to run it.
function(slicer_add_python_unittest)
endfunction()
