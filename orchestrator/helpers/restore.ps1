<#
.SYNOPSIS
    keyfleet restore helper: puts a backed-up SCSM encryption key back with SecureStorageBackup.exe.
.DESCRIPTION
    Sent after common.ps1 and conpty.ps1 as one script. -Params: file (the key file in base64),
    sha256, tool_path, tool_timeout, tool_input, expected_computer_name, expected_role; -Secret: the
    password the file was made with. Verifies the file's SHA-256, refuses a server whose computer
    name differs or whose SCSM roles do not include the expected one (a server not yet set up has no
    role and is accepted, as Microsoft's recovery restores the key before Setup runs), writes the
    file into a private temporary folder (Administrators and SYSTEM only), runs
    "SecureStorageBackup.exe Restore <file>" with the password typed as tool_input says and a hard
    timeout, and always removes the folder (a failed removal is reported as cleanup_warning).
#>
Assert-Administrator
if ($null -eq $Secret -or $Secret.Length -eq 0) { Stop-Helper 'remote' 'no password for the key file was given' }
$timeout = Get-ToolTimeout
$encoded = Get-Param 'file'
if (-not $encoded) { Stop-Helper 'protocol' 'the request holds no key file' }
try { $bytes = [Convert]::FromBase64String([string]$encoded) }
catch [FormatException] { Stop-Helper 'protocol' 'the key file in the request is not valid base64' }
if ($bytes.Length -gt $MaximumKeyFileBytes) { Stop-Helper 'protocol' "the key file in the request is larger than $MaximumKeyFileBytes bytes" }
$sha256 = Get-Sha256Hex $bytes
if ($sha256 -ne [string](Get-Param 'sha256')) {
    Stop-Helper 'integrity' 'the key file received does not match its SHA-256; nothing was restored'
}
$expectedName = Get-Param 'expected_computer_name'
if ($expectedName) {
    $expectedName = ([string]$expectedName).Split('.')[0]
    if ($expectedName -ne $env:COMPUTERNAME) {
        Stop-Helper 'name-mismatch' "this server is $env:COMPUTERNAME but the key file belongs to ${expectedName}: a key can only be restored onto a server with the same computer name"
    }
}
$roles = Get-ScsmRoles
$expectedRole = Get-Param 'expected_role'
if ($expectedRole -and $roles.Length -gt 0 -and $roles -notcontains $expectedRole) {
    Stop-Helper 'role-mismatch' ('this server is a {0} but the key file belongs to a {1}' -f ($roles -join ' and '), $expectedRole)
}
$version = Get-ScsmVersion
$tool = Get-RequiredTool
$folder = New-PrivateFolder
$result = $null
try {
    $keyFile = Join-Path $folder 'SMBackupkey.bin'
    try { [IO.File]::WriteAllBytes($keyFile, $bytes) }
    catch [IO.IOException] {
        $cause = $_.Exception.GetBaseException()
        # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
        if ($cause.HResult -in @(-2147024857, -2147024784)) { Stop-Helper 'disk-full' $cause.Message }
        throw
    }
    $run = Invoke-Tool $tool 'Restore' $keyFile $timeout
    if ($run.exit -ne 0) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Restore exited with code {0}: {1}' -f $run.exit, $run.output)
    }
    $result = @{ sha256 = $sha256 } + (New-ToolResult $roles $version $tool $run)
}
finally {
    $cleanup = Remove-PrivateFolder $folder
}
if ($cleanup) { $result.cleanup_warning = $cleanup }
return $result
