# AmtsboteGenerate.cmake - amtsbote_generate(): protoc-c's code and Amtsbote's typed stubs for
# .proto files, compiled into a target.
#
#   amtsbote_generate(<target> PROTOS <file.proto>... [PROTO_PATH <dir>...] [OUT_DIR <dir>])
#
# For every file in PROTOS it runs protoc-c (NAME.pb-c.c/.h) and protoc with
# protoc-gen-amtsbote (NAME.ab.c/.h), adds the sources to <target>, puts the output directory on
# its include path (PUBLIC) and links it with the Amtsbote library and libprotobuf-c. Files they
# import (your own, and well-known types such as google/protobuf/timestamp.proto, whose protoc-c
# code no package ships) get their .pb-c.c compiled into <target> too, found by following the
# import statements. NAME is the file's path relative to the PROTO_PATH directory it lies in
# (default: the file's own directory), so `#include "meldewesen/v1/meldewesen.ab.h"` matches
# protoc's view of the file. Files without services get a header that only includes NAME.pb-c.h.
#
# Two targets that both compile the same imported file (say timestamp.proto) each get their own
# copy; do not link both into one program, but generate in one library that the others use.
#
# Settings, read when the function is called:
#   AMTSBOTE_PROTOC_PLUGIN   the plugin: a path, or a target name in the build that makes it
#                            (set by amtsboteConfig.cmake to the installed bin/protoc-gen-amtsbote)
#   AMTSBOTE_LIBRARY_TARGET  the library to link (amtsboteConfig.cmake: amtsbote::amtsbote)
#   AMTSBOTE_PROTOC, AMTSBOTE_PROTOC_C   protoc and protoc-c (found on PATH by default)
#   AMTSBOTE_WELL_KNOWN_PROTO_DIR   where google/protobuf/*.proto lie (found by default)

find_program(AMTSBOTE_PROTOC NAMES protoc)
find_program(AMTSBOTE_PROTOC_C NAMES protoc-c)
find_path(AMTSBOTE_WELL_KNOWN_PROTO_DIR google/protobuf/timestamp.proto
  HINTS /usr/include /usr/local/include)
if(NOT TARGET amtsbote::protobuf_c)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(AMTSBOTE_PROTOBUF_C REQUIRED IMPORTED_TARGET GLOBAL libprotobuf-c>=1.4)
  add_library(amtsbote::protobuf_c INTERFACE IMPORTED GLOBAL)
  set_target_properties(amtsbote::protobuf_c PROPERTIES
    INTERFACE_LINK_LIBRARIES PkgConfig::AMTSBOTE_PROTOBUF_C)
endif()

# Strips comments and returns the files `file` imports, in _amtsbote_imports.
function(_amtsbote_imports file)
  file(READ "${file}" text)
  string(REGEX REPLACE "/\\*([^*]|\\*+[^*/])*\\*+/" "" text "${text}")
  string(REGEX REPLACE "//[^\n]*" "" text "${text}")
  string(REGEX MATCHALL "import[ \t\r\n]+(public[ \t\r\n]+|weak[ \t\r\n]+)?\"[^\"]+\"" found
    "${text}")
  set(out)
  foreach(i ${found})
    string(REGEX REPLACE ".*\"([^\"]+)\"" "\\1" name "${i}")
    list(APPEND out "${name}")
  endforeach()
  set(_amtsbote_imports "${out}" PARENT_SCOPE)
endfunction()

function(amtsbote_generate target)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "OUT_DIR" "PROTOS;PROTO_PATH")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "amtsbote_generate(${target}): unknown arguments: ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT TARGET ${target})
    message(FATAL_ERROR "amtsbote_generate: '${target}' is not a target (add_executable or add_library first)")
  endif()
  if(NOT ARG_PROTOS)
    message(FATAL_ERROR "amtsbote_generate(${target}): PROTOS names no .proto file")
  endif()
  foreach(v AMTSBOTE_PROTOC_PLUGIN AMTSBOTE_LIBRARY_TARGET)
    if(NOT ${v})
      message(FATAL_ERROR "amtsbote_generate: ${v} is not set (use find_package(amtsbote))")
    endif()
  endforeach()
  if(NOT AMTSBOTE_PROTOC OR NOT AMTSBOTE_PROTOC_C)
    message(FATAL_ERROR "amtsbote_generate: protoc and protoc-c are needed (packages protobuf-compiler, protobuf-c-compiler)")
  endif()
  set(out_dir "${ARG_OUT_DIR}")
  if(NOT out_dir)
    set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/amtsbote_gen/${target}")
  endif()
  file(MAKE_DIRECTORY "${out_dir}")

  # the import path: PROTO_PATH, each listed file's own directory, then the well-known types
  set(paths)
  foreach(d ${ARG_PROTO_PATH})
    get_filename_component(d "${d}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND paths "${d}")
  endforeach()
  set(todo)
  foreach(p ${ARG_PROTOS})
    get_filename_component(abs "${p}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT EXISTS "${abs}")
      message(FATAL_ERROR "amtsbote_generate(${target}): ${abs} does not exist")
    endif()
    set(name "")
    foreach(d ${paths})
      file(RELATIVE_PATH rel "${d}" "${abs}")
      if(NOT rel MATCHES "^\\.\\./")
        set(name "${rel}")
        break()
      endif()
    endforeach()
    if(NOT name)
      get_filename_component(d "${abs}" DIRECTORY)
      list(APPEND paths "${d}")
      get_filename_component(name "${abs}" NAME)
    endif()
    list(APPEND todo "${name}")
  endforeach()
  set(generate "${todo}")
  if(AMTSBOTE_WELL_KNOWN_PROTO_DIR)
    list(APPEND paths "${AMTSBOTE_WELL_KNOWN_PROTO_DIR}")
  endif()
  list(REMOVE_DUPLICATES paths)
  list(REMOVE_DUPLICATES generate)

  # every file reached through imports, by name, with where it lies
  set(all)
  set(files)
  while(todo)
    list(POP_FRONT todo name)
    if(name IN_LIST all)
      continue()
    endif()
    set(found "")
    foreach(d ${paths})
      if(EXISTS "${d}/${name}")
        set(found "${d}/${name}")
        break()
      endif()
    endforeach()
    if(NOT found)
      message(FATAL_ERROR "amtsbote_generate(${target}): cannot find ${name} in ${paths}")
    endif()
    list(APPEND all "${name}")
    list(APPEND files "${found}")
    _amtsbote_imports("${found}")
    list(APPEND todo ${_amtsbote_imports})
  endwhile()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${files})

  set(ipaths)
  foreach(d ${paths})
    list(APPEND ipaths "--proto_path=${d}")
  endforeach()
  set(pbc_out)
  set(pbc_src)
  foreach(name ${all})
    string(REGEX REPLACE "\\.proto$" "" base "${name}")
    list(APPEND pbc_out "${out_dir}/${base}.pb-c.c" "${out_dir}/${base}.pb-c.h")
    list(APPEND pbc_src "${out_dir}/${base}.pb-c.c")
  endforeach()
  set(ab_out)
  set(ab_src)
  foreach(name ${generate})
    string(REGEX REPLACE "\\.proto$" "" base "${name}")
    list(APPEND ab_out "${out_dir}/${base}.ab.c" "${out_dir}/${base}.ab.h")
    list(APPEND ab_src "${out_dir}/${base}.ab.c")
  endforeach()

  if(TARGET ${AMTSBOTE_PROTOC_PLUGIN})
    set(plugin "$<TARGET_FILE:${AMTSBOTE_PROTOC_PLUGIN}>")
  else()
    set(plugin "${AMTSBOTE_PROTOC_PLUGIN}")
  endif()
  add_custom_command(
    OUTPUT ${pbc_out}
    COMMAND "${AMTSBOTE_PROTOC_C}" ${ipaths} "--c_out=${out_dir}" ${all}
    DEPENDS ${files}
    COMMENT "protoc-c ${all}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${ab_out}
    COMMAND "${AMTSBOTE_PROTOC}" "--plugin=protoc-gen-amtsbote=${plugin}" ${ipaths}
      "--amtsbote_out=always:${out_dir}" ${generate}
    DEPENDS ${files} ${AMTSBOTE_PROTOC_PLUGIN}
    COMMENT "protoc-gen-amtsbote ${generate}"
    VERBATIM)
  target_sources(${target} PRIVATE ${pbc_src} ${ab_src})
  target_include_directories(${target} PUBLIC "${out_dir}")
  # appended to the properties rather than target_link_libraries(), which would clash with the
  # caller's own calls in the other (plain or keyword) signature
  set_property(TARGET ${target} APPEND PROPERTY LINK_LIBRARIES
    ${AMTSBOTE_LIBRARY_TARGET} amtsbote::protobuf_c)
  get_target_property(type ${target} TYPE)
  if(NOT type STREQUAL "EXECUTABLE")
    set_property(TARGET ${target} APPEND PROPERTY INTERFACE_LINK_LIBRARIES
      ${AMTSBOTE_LIBRARY_TARGET} amtsbote::protobuf_c)
  endif()
endfunction()
